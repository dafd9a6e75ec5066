"""portaft export OUTPUT_DIR --to DIR: a run as one GGUF file for llama.cpp and Ollama, with a Modelfile."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's model as GGUF (llama.cpp, Ollama) with an Ollama Modelfile")
    p.add_argument("output_dir", metavar="OUTPUT_DIR",
                   help="a run's train.output_dir (adapter or full), one of its checkpoint-N, or a merged model folder")
    p.add_argument("--to", required=True, metavar="DIR", help="folder for NAME.gguf and Modelfile (new or empty)")
    p.add_argument("--quant", default="f16", metavar="TYPE",
                   help="f16 (default), bf16 or q8_0 (8-bit, about half the size of f16)")
    p.add_argument("--name", metavar="NAME", help="name of the .gguf file and the Ollama model (default: the run's folder name)")
    p.add_argument("--base", metavar="PATH", help="the base model of an adapter, when not where the run's recipe says")
    p.add_argument("--overwrite", action="store_true", help="replace NAME.gguf and Modelfile in a non-empty DIR")
    p.set_defaults(handler=handle)


def handle(args) -> int:
    from portaft.after.export import export

    export(args.output_dir, args.to, quant=args.quant, name=args.name, overwrite=args.overwrite, base=args.base)
    return 0
