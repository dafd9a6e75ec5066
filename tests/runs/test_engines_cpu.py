"""Why train.fsdp is refused on the CPU: what accelerate does with it there (docs/scaling.md).

If this test fails, an accelerate that shards on the CPU has arrived: the refusal
(backends/device.py NO_FSDP_ON_CPU) can then give way to a real sharded run, checked
against DDP's losses.
"""

import os
import subprocess
import sys

import pytest

from portaft.engines import fsdp

ASK_FOR_FSDP_ON_CPU = """
import os
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

args = TrainingArguments(output_dir=os.environ["OUT"], use_cpu=True, ddp_backend="gloo", fsdp=True,
                         fsdp_config={"version": 2}, report_to="none", max_steps=1)
model = AutoModelForCausalLM.from_pretrained(os.environ["MODEL"])
trainer = Trainer(model=model, args=args)
wrapped = trainer.accelerator.prepare_model(model)
if os.environ["RANK"] == "0":
    print("FOUND", trainer.accelerator.distributed_type.value, trainer.is_fsdp_enabled, type(wrapped).__name__)
"""


@pytest.mark.skipif(fsdp.unavailable() is not None, reason="the stack without FSDP2 (transformers 4.45) is not the "
                    "one this documents")
def test_accelerate_trains_plain_ddp_when_asked_for_fsdp_on_the_cpu(tiny_model, tmp_path):
    script = tmp_path / "ask.py"
    script.write_text(ASK_FOR_FSDP_ON_CPU, encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MODEL": str(tiny_model), "OUT": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FOUND MULTI_CPU False DistributedDataParallel" in done.stdout
