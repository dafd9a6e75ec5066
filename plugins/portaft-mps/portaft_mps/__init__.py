"""portaft-mps: train portaft recipes on an Apple-silicon GPU (torch device "mps").

A complete backend plugin. It inherits from no portaft class: portaft checks that the
object has the members of `portaft.protocols.Backend`. torch and transformers are
imported inside methods, so loading this plugin on any machine costs nothing.
"""

from portaft import hookimpl


class MpsBackend:
    name = "mps"
    device_type = "mps"
    priority = 30  # `auto` order: npu (100) > cuda (50) > mps (30) > cpu (0)
    distributed_backend = "gloo"  # mps has no collective library of its own

    def unavailable_reason(self):
        import torch

        if not torch.backends.mps.is_built():
            return "this torch was built without mps support (mps needs macOS on Apple silicon)"
        if not torch.backends.mps.is_available():
            return "torch.backends.mps.is_available() is False (needs macOS 12.3+ on Apple silicon)"
        return None

    def is_available(self):
        return self.unavailable_reason() is None

    def resolve(self, recipe):
        """mps has no reliable bf16 autocast for training: run float32, and say so."""
        recipe = recipe.model_copy(deep=True)
        notes = []
        for flag in ("bf16", "fp16"):
            if recipe.train.get(flag):
                recipe.train[flag] = False
                notes.append(f"train.{flag}: true -> false (mixed precision training on mps is not supported here)")
        if recipe.model.dtype != "float32":
            notes.append(f"model.dtype: {recipe.model.dtype} -> float32 (mps trains in float32)")
            recipe.model.dtype = "float32"
        return recipe, notes

    def load_tokenizer(self, recipe):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(recipe.model.name_or_path,
                                             trust_remote_code=recipe.model.trust_remote_code)

    def load_model(self, recipe):
        from transformers import AutoModelForCausalLM

        # float32 is from_pretrained's default dtype, so no version-specific dtype argument is needed.
        return AutoModelForCausalLM.from_pretrained(recipe.model.name_or_path,
                                                    trust_remote_code=recipe.model.trust_remote_code)

    def training_arguments(self, **kwargs):
        from transformers import TrainingArguments

        return TrainingArguments(**kwargs)  # transformers places the model on mps when it is available

    def trainer(self, tokenizer=None, **kwargs):
        from transformers import Trainer

        from portaft.compat import trainer_kwargs  # `tokenizer` or `processing_class`, by version

        return Trainer(**kwargs, **trainer_kwargs(Trainer, tokenizer))

    def collator(self, tokenizer):
        return None  # portaft supplies its own seq2seq collator


@hookimpl
def register_backends(register):
    register(MpsBackend())
