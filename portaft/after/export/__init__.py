"""`portaft export`: a finished run as a GGUF file (llama.cpp, Ollama) and an Ollama Modelfile."""

from .to_gguf import ExportResult, export

__all__ = ["ExportResult", "export"]
