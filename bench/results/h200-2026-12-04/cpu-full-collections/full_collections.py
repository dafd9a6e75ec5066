"""Do full garbage collections happen in steady training without the freeze? A 30-layer narrow llama
(DeepSeek-7B's count of modules) trained on the cpu backend; prints each full collection as
(step, ms, objects collected). Usage: python full_collections.py freeze|nofreeze STEPS"""
import gc, json, sys, time
from pathlib import Path
import portaft, portaft.callbacks as cb
from transformers import Trainer

freeze = sys.argv[1] == "freeze"
steps = int(sys.argv[2])
model_dir = Path("/tmp/gcx/model30")
if not (model_dir / "done").exists():
    import portaft.testing as t
    t.TINY_CONFIG = dict(t.TINY_CONFIG, num_hidden_layers=30, hidden_size=64, intermediate_size=172, num_attention_heads=4, num_key_value_heads=4)
    t.build_tiny_model(model_dir); (model_dir / "done").write_text("1")
state = {"step": 0, "t0": None}
events = []
def on_gc(phase, info):
    if info["generation"] != 2: return
    if phase == "start": state["t0"] = time.perf_counter()
    else: events.append((state["step"], round((time.perf_counter() - state["t0"]) * 1e3, 1), info["collected"]))
gc.callbacks.append(on_gc)
orig = Trainer.training_step
def training_step(self, *a, **k):
    state["step"] = self.state.global_step + 1
    return orig(self, *a, **k)
Trainer.training_step = training_step
if not freeze:
    class Off(cb.FrozenLongLivedObjects):
        def __init__(self): super().__init__(); self.active = False
    cb.FrozenLongLivedObjects = Off  # the runner imports it when it runs
data = Path("/tmp/gcx/data.jsonl")
import random
random.seed(0)
with data.open("w") as f:
    for i in range(4000):
        f.write(json.dumps({"conversation": [{"input": "你好 " * random.randint(5, 40), "output": "我是助手 " * random.randint(5, 40)}]}, ensure_ascii=False) + "\n")
recipe = {"model": {"name_or_path": str(model_dir)}, "data": [{"path": str(data), "format": "xtuner"}],
          "template": "deepseek", "max_length": 256,
          "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"},
          "train": {"output_dir": f"/tmp/gcx/out-{sys.argv[1]}", "max_steps": steps, "per_device_train_batch_size": 4,
                    "learning_rate": 1e-4, "logging_steps": 10, "save_strategy": "no", "report_to": "none"}}
t = time.perf_counter()
portaft.run(recipe, backend="cpu")
print("RESULT", sys.argv[1], "objects", len(gc.get_objects()), "full collections (step, ms, collected):", events, "total s", round(time.perf_counter() - t, 1))
