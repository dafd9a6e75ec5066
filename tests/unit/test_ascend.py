"""What `portaft doctor` knows about Ascend (portaft/checks/ascend.py), each finding on a fake
machine, and the platform's settings the npu backend sets before torch_npu initialises."""

import json
import types

import pytest

import npu_doubles
import portaft
from portaft import load_recipe
from portaft.backends import npu_platform
from portaft.checks import ascend
from portaft.cli import main

PLATFORM = ("TASK_QUEUE_ENABLE", "CPU_AFFINITY_CONF", "PYTORCH_NPU_ALLOC_CONF", "HCCL_CONNECT_TIMEOUT",
            "NPU_JIT_COMPILE", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "ASCEND_TOOLKIT_HOME", "ASCEND_RT_VISIBLE_DEVICES")


@pytest.fixture
def clean(monkeypatch, tmp_path):
    """No platform variable set (restored afterwards), no CANN at the default place, fresh caches."""
    from portaft.backends import npu

    for name in PLATFORM:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setattr(ascend, "DEFAULT_TOOLKIT", str(tmp_path / "no-cann"))
    monkeypatch.setattr("portaft.backends.npu._versions", lambda: {"torch": "2.5.1", "torch_npu": "2.5.1"})
    npu._unavailable_reason.cache_clear()
    npu_platform.reset()
    yield npu
    npu._unavailable_reason.cache_clear()
    npu_platform.reset()


def _findings(found):
    return [(f["what"], f["fatal"]) for f in found]


# --- doctor's findings -----------------------------------------------------------------------

def test_cann_installed_but_set_env_not_sourced_is_fatal(tmp_path):
    toolkit = tmp_path / "ascend-toolkit" / "latest"
    (toolkit / "lib64").mkdir(parents=True)
    [(what, fatal)] = _findings(ascend.set_env_not_sourced({}, str(toolkit)))
    assert fatal and "ASCEND_TOOLKIT_HOME is unset: set_env.sh was not sourced" in what
    [(what, fatal)] = _findings(ascend.set_env_not_sourced({"ASCEND_TOOLKIT_HOME": str(toolkit),
                                                            "LD_LIBRARY_PATH": "/usr/lib"}, str(toolkit)))
    assert fatal and f"{toolkit / 'lib64'} is not on LD_LIBRARY_PATH" in what
    sourced = {"ASCEND_TOOLKIT_HOME": str(toolkit), "LD_LIBRARY_PATH": f"/usr/lib:{toolkit / 'lib64'}/"}
    assert ascend.set_env_not_sourced(sourced, str(toolkit)) == []
    assert ascend.set_env_not_sourced({}, str(tmp_path / "nothing")) == []  # no CANN: nothing to source


@pytest.mark.parametrize("cann, torch_npu, problem", [
    ("8.0.RC2 (/usr/local/Ascend/ascend-toolkit/latest)", "2.1.0.post6", False),
    ("8.0.RC2", "2.4.0", True),  # 2.4 was first built for 8.0.RC3
    ("8.0.RC2", "2.1.0.post4", True),  # older than the release built for it
    ("8.1.RC1", "2.5.1", False),
    ("9.9.RC9", "2.5.1", False),  # not in the table: no claim either way
])
def test_cann_against_the_torch_npu_table(cann, torch_npu, problem):
    found = ascend.cann_pairing(cann, torch_npu)
    assert bool(found) == problem
    if problem:
        assert "github.com/Ascend/pytorch README.md" in found[0]["what"] and "torch_npu==" in found[0]["fix"]


def test_torch_and_torch_npu_major_minor_is_fatal_and_the_patch_a_warning():
    assert _findings(ascend.torch_pairing("2.4.0", "2.5.1")) == [
        ("torch 2.4.0 and torch_npu 2.5.1 differ in major.minor: torch_npu will not load", True)]
    assert _findings(ascend.torch_pairing("2.5.0", "2.5.1.post1")) == [
        ("torch 2.5.0 and torch_npu 2.5.1.post1 differ in the patch release", False)]
    assert ascend.torch_pairing("2.5.1+cpu", "2.5.1.post1") == []


SMI = """+------------------------------------------------------------------------------------------------+
| npu-smi 23.0.6                   Version: 23.0.6                                               |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
+===========================+===============+====================================================+
| 0     910B3               | OK            | 93.6        40                0    / 0             |
| 1     910B3               | OK            | 90.1        39                0    / 0             |
"""


def test_npu_smi_gives_the_driver_and_chips_and_a_failing_one_is_fatal():
    output, found = ascend.npu_smi(lambda: types.SimpleNamespace(returncode=0, stdout=SMI, stderr=""))
    assert found == [] and ascend.driver_version(output) == "23.0.6" and ascend.chips(output) == ["910B3", "910B3"]
    _, [failed] = ascend.npu_smi(lambda: types.SimpleNamespace(
        returncode=255, stdout="", stderr="dcmi module initialize failed. ret is -8005"))
    assert failed["fatal"] and "dcmi module initialize failed" in failed["what"] and "driver" in failed["fix"]


def test_more_processes_than_visible_npus_is_fatal():
    [(what, fatal)] = _findings(ascend.visible_devices({"ASCEND_RT_VISIBLE_DEVICES": "0,1"}, nproc=4))
    assert fatal and what.startswith("--nproc 4 but ASCEND_RT_VISIBLE_DEVICES=0,1 shows 2 NPU(s)")
    assert ascend.visible_devices({"ASCEND_RT_VISIBLE_DEVICES": "0,1"}, nproc=2) == []
    assert ascend.visible_devices({}, nproc=8, device_count=4)[0]["what"].startswith("--nproc 8 but this machine")


def test_910a_has_no_bfloat16_and_910b_does():
    [(what, fatal)] = _findings(ascend.precision(["910A"], None))
    assert not fatal and "910A has no bfloat16" in what
    assert ascend.precision(["910B3"], True) == [] and ascend.precision([], False)


def test_doctor_json_carries_the_ascend_findings(clean, monkeypatch, tmp_path, capsys):
    toolkit = tmp_path / "toolkit"
    (toolkit / "lib64").mkdir(parents=True)
    (toolkit / "version.cfg").write_text("version=8.0.RC2\n")
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(toolkit))
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(ascend, "npu_smi", lambda run=None: (SMI.replace("910B3", "910A"), []))
    code = main(["doctor", "--json", "--nproc", "2"])
    report = json.loads(capsys.readouterr().out)
    assert report["cann"].startswith("8.0.RC2") and report["ascend"]["chips"] == ["910A", "910A"]
    problems = {p["what"]: p["fatal"] for p in report["problems"]}
    assert problems[f"ASCEND_TOOLKIT_HOME is {toolkit} but {toolkit / 'lib64'} is not on LD_LIBRARY_PATH: set_env.sh "
                    "was not sourced in this shell (or LD_LIBRARY_PATH was overwritten after it)"] is True
    assert problems["--nproc 2 but ASCEND_RT_VISIBLE_DEVICES=0 shows 1 NPU(s): the extra processes have no device "
                    "and HCCL waits for them"] is True
    assert any(what.startswith("910A has no bfloat16") for what in problems) and code == 3


# --- a fatal finding stops an npu run before torch_npu loads ----------------------------------

def test_a_fatal_finding_stops_an_npu_run_with_the_doctors_words(clean, monkeypatch, recipe_dict, tmp_path):
    state = npu_doubles.install(monkeypatch, available=True)
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(tmp_path))
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/lib")
    with pytest.raises(portaft.BackendUnavailable, match=r"backend 'npu' is not available: portaft doctor: "
                       r"ASCEND_TOOLKIT_HOME is .* set_env.sh was not sourced .*\(fix: source "):
        portaft.run(recipe_dict, backend="npu", echo=lambda _: None)
    assert state["imports"] == 0  # stopped before torch_npu's import, not by its traceback


# --- the platform's settings ------------------------------------------------------------------

def test_the_platform_settings_are_set_before_torch_npu_initialises(clean, monkeypatch, recipe_dict):
    state = npu_doubles.install(monkeypatch, available=True, bf16=True)
    npu = portaft.get_backend("npu")
    assert npu.unavailable_reason() is None
    seen = state["environ_at_import"]  # what torch_npu's import saw
    assert (seen["TASK_QUEUE_ENABLE"], seen["CPU_AFFINITY_CONF"], seen["PYTORCH_NPU_ALLOC_CONF"]) == (
        "2", "1", "expandable_segments:True")
    assert "HCCL_CONNECT_TIMEOUT" not in seen  # one process
    assert state["compile_modes"] == [{"jit_compile": False}]
    _, notes = npu.resolve(load_recipe(recipe_dict))
    text = "\n".join(notes)
    for expected in ("env TASK_QUEUE_ENABLE: unset -> 2 (", "env CPU_AFFINITY_CONF: unset -> 1 (",
                     "env PYTORCH_NPU_ALLOC_CONF: unset -> expandable_segments:True (",
                     "torch.npu.set_compile_mode(jit_compile=False) ("):
        assert expected in text


def test_a_users_value_is_kept_and_said(clean, monkeypatch, recipe_dict):
    monkeypatch.setenv("TASK_QUEUE_ENABLE", "1")
    monkeypatch.setenv("NPU_JIT_COMPILE", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    state = npu_doubles.install(monkeypatch, available=True)
    npu = portaft.get_backend("npu")
    assert npu.unavailable_reason() is None
    assert state["environ_at_import"]["TASK_QUEUE_ENABLE"] == "1"
    assert state["environ_at_import"]["HCCL_CONNECT_TIMEOUT"] == "1200"  # several processes
    assert state["compile_modes"] == [{"jit_compile": True}]
    notes = "\n".join(npu.resolve(load_recipe(recipe_dict))[1])
    assert "env TASK_QUEUE_ENABLE: 1 (yours, kept; portaft's default is 2:" in notes
    assert "env HCCL_CONNECT_TIMEOUT: unset -> 1200 (" in notes and "(yours: NPU_JIT_COMPILE is set)" in notes


def test_several_npu_processes_train_over_hccl_without_the_unused_parameter_search(clean, monkeypatch, recipe_dict):
    from portaft.runner.resolve import _several_processes

    npu_doubles.install(monkeypatch, available=True)
    npu = portaft.get_backend("npu")
    effective, _ = npu.resolve(load_recipe(recipe_dict))
    notes = _several_processes(effective, "npu", npu.device(), 2)
    assert notes[0] == "train.ddp_backend: unset -> hccl (2 processes on npu)"
    assert notes[1].startswith("train.ddp_find_unused_parameters: unset -> false")


# --- where each speed-up applies ----------------------------------------------------------------

@pytest.mark.parametrize("chip, used", [("Ascend910B3", True), ("Ascend910A", False)])
def test_the_a2_only_operators_are_not_used_on_a_910a(clean, monkeypatch, recipe_dict, tiny_model, chip, used):
    from transformers import AutoModelForCausalLM

    from portaft.backends.device import Device
    from portaft.speed_ups import MODEL, Training, apply_stage, npu_rms_norm, npu_swiglu
    from portaft.speed_ups.npu_ops import atlas_a2_problem

    npu_doubles.install(monkeypatch, available=True, device_name=chip)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    training = Training(load_recipe(recipe_dict), Device("npu", bf16=used, fp16=True, fused_optimizer=None,
                                                         collectives="hccl"), 1, model=model, flattened=True)
    assert npu_rms_norm.applies(training) is None  # Atlas training series too
    # npu_fusion_attention's own applies() asks transformers first (4.45 cannot take it at all)
    reasons = [atlas_a2_problem(training, "npu_fusion_attention"), npu_swiglu.applies(training)]
    if used:
        assert reasons == [None, None]
    else:
        assert reasons == [f"{op} runs on Atlas A2/A3 (910B) NPUs only, per its documentation; this is Ascend910A"
                           for op in ("npu_fusion_attention", "npu_swiglu")]
    if hasattr(model, "set_attn_implementation"):  # transformers 5: the speed-up itself gives that reason
        from portaft.speed_ups import npu_fusion_attention

        assert npu_fusion_attention.applies(training) == reasons[0]
    assert apply_stage([npu_swiglu], MODEL, training)[0].startswith(
        "speed-up npu_swiglu: 2 MLPs'" if used else "speed-up npu_swiglu: not used (npu_swiglu runs on Atlas A2")


def test_each_speed_up_says_which_operator_this_torch_npu_lacks(clean, monkeypatch, recipe_dict, tiny_model):
    from transformers import AutoModelForCausalLM

    from portaft.backends.device import CPU
    from portaft.speed_ups import MODEL, SETTINGS, Training, apply_stage, npu_fused_adamw, npu_rms_norm, npu_swiglu

    npu_doubles.install(monkeypatch, ops=("npu_fusion_attention",))  # an old torch_npu: no fused norm or SwiGLU
    training = Training(load_recipe(recipe_dict), CPU, 1, model=AutoModelForCausalLM.from_pretrained(tiny_model))
    assert apply_stage([npu_rms_norm, npu_swiglu], MODEL, training) == [
        "speed-up npu_rms_norm: not used (this torch_npu has no torch_npu.npu_rms_norm)",
        "speed-up npu_swiglu: not used (this torch_npu has no torch_npu.npu_swiglu)"]
    assert apply_stage([npu_fused_adamw], SETTINGS, training) == [
        "speed-up npu_fused_adamw: train.optim: unset -> adamw_torch_npu_fused (torch_npu.optim.NpuFusedAdamW: one "
        "fused update for all parameters)"]
    assert training.recipe.train["optim"] == "adamw_torch_npu_fused"
    named = Training(load_recipe({**recipe_dict, "train": {**recipe_dict["train"], "optim": "sgd"}}), CPU, 1)
    assert npu_fused_adamw.applies(named) == "the recipe sets train.optim: sgd"
