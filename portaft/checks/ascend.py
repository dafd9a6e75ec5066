"""What `portaft doctor` knows about Ascend: the few mistakes Ascend users meet again and
again, each one finding with its fix. A fatal finding also stops a run on the npu backend
before torch_npu is imported (backends/npu.py), with the same words.

Every check takes what it reads as arguments (environment, versions, file system root,
`npu-smi info` output), so the tests give it fake machines.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping

from packaging.version import Version

DEFAULT_TOOLKIT = "/usr/local/Ascend/ascend-toolkit/latest"
SET_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"

# CANN release -> the torch_npu releases built for it (torch version: torch_npu version).
# Source: the "Ascend Auxiliary Software" table of github.com/Ascend/pytorch README.md,
# commit 19fb59621f7c5dc6baca7889e333ed4cf65a8c51 (branch v2.5.1-7.1.0 era), rows 8.0.RC1 on.
CANN_TORCH_NPU = {
    "8.2.RC1": {"2.6.0": "2.6.0", "2.5.1": "2.5.1.post1", "2.1.0": "2.1.0.post13"},
    "8.1.RC1": {"2.5.1": "2.5.1", "2.4.0": "2.4.0.post4", "2.3.1": "2.3.1.post6", "2.1.0": "2.1.0.post12"},
    "8.0.0": {"2.4.0": "2.4.0.post2", "2.3.1": "2.3.1.post4", "2.1.0": "2.1.0.post10"},
    "8.0.RC3": {"2.4.0": "2.4.0", "2.3.1": "2.3.1.post2", "2.1.0": "2.1.0.post8"},
    "8.0.RC2": {"2.3.1": "2.3.1", "2.2.0": "2.2.0.post2", "2.1.0": "2.1.0.post6", "1.11.0": "1.11.0.post14"},
    "8.0.RC1": {"2.2.0": "2.2.0", "2.1.0": "2.1.0.post4", "1.11.0": "1.11.0.post11"},
}
TABLE_SOURCE = "github.com/Ascend/pytorch README.md, 'Ascend Auxiliary Software' (commit 19fb596)"


def finding(what: str, fix: str, fatal: bool = False) -> dict[str, Any]:
    return {"what": what, "fix": fix, "fatal": fatal}


def set_env_not_sourced(environ: Mapping[str, str], toolkit: str | None = None) -> list[dict]:
    """CANN is installed but its set_env.sh was not sourced: torch_npu then fails to load
    its libraries (or a launcher silently trains elsewhere)."""
    toolkit = toolkit or DEFAULT_TOOLKIT
    home = environ.get("ASCEND_TOOLKIT_HOME")
    fix = f"source {SET_ENV} (or <your CANN>/set_env.sh) in this shell and in ~/.bashrc, then run again"
    if not home:
        if Path(toolkit).is_dir():
            return [finding(f"CANN is installed ({toolkit}) but ASCEND_TOOLKIT_HOME is unset: set_env.sh was not "
                            "sourced", fix, fatal=True)]
        return []
    libraries = [p for p in environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    lib = str(Path(home) / "lib64")
    if not any(os.path.normpath(p) == os.path.normpath(lib) for p in libraries):
        return [finding(f"ASCEND_TOOLKIT_HOME is {home} but {lib} is not on LD_LIBRARY_PATH: set_env.sh was not "
                        "sourced in this shell (or LD_LIBRARY_PATH was overwritten after it)", fix, fatal=True)]
    return []


def cann_release(text: str | None) -> str | None:
    """'8.0.RC2' from doctor's CANN line ('8.0.RC2 (/usr/local/...)', '8.0.0.alpha001')."""
    match = re.search(r"(\d+\.\d+\.(?:RC\d+|\d+))", text or "")
    return match.group(1) if match else None


def cann_pairing(cann: str | None, torch_npu: str | None) -> list[dict]:
    """torch_npu against the releases built for the installed CANN (CANN_TORCH_NPU)."""
    release = cann_release(cann)
    if not release or not torch_npu or release not in CANN_TORCH_NPU:
        return []
    built = CANN_TORCH_NPU[release]
    torch_base = ".".join(str(n) for n in Version(torch_npu).release[:3])
    if torch_base in built and Version(torch_npu) >= Version(built[torch_base]):
        return []
    choices = ", ".join(f"torch_npu=={v} (torch {t})" for t, v in built.items())
    return [finding(f"torch_npu {torch_npu} is not one of the releases built for CANN {release} ({TABLE_SOURCE})",
                    f"install one of {choices}, with its torch; or the CANN release your torch_npu was built for")]


def torch_pairing(torch: str | None, torch_npu: str | None) -> list[dict]:
    """A torch_npu release is built for one torch release: major.minor must match (fatal: it
    does not import), and the patch should."""
    if not torch or not torch_npu:
        return []
    have, need = Version(torch).release, Version(torch_npu).release
    fix = (f"pip install torch_npu=={Version(torch).base_version} (a torch_npu release is built for one torch "
           f"release), or torch=={'.'.join(map(str, need[:3]))} for this torch_npu")
    if have[:2] != need[:2]:
        return [finding(f"torch {torch} and torch_npu {torch_npu} differ in major.minor: torch_npu will not load",
                        fix, fatal=True)]
    if have[:3] != need[:3]:
        return [finding(f"torch {torch} and torch_npu {torch_npu} differ in the patch release", fix)]
    return []


def npu_smi(run: Any = None) -> tuple[str | None, list[dict]]:
    """(`npu-smi info` output or None when there is no npu-smi, findings). A failing npu-smi
    means the driver is not loaded: fatal."""
    if run is None:
        if shutil.which("npu-smi") is None:
            return None, []
        run = lambda: subprocess.run(["npu-smi", "info"], capture_output=True, text=True, timeout=20)  # noqa: E731
    try:
        done = run()
    except (OSError, subprocess.SubprocessError) as exc:
        return None, [finding(f"npu-smi info failed: {exc}", "check the Ascend driver install (npu-smi info as root)",
                              fatal=True)]
    if done.returncode != 0:
        said = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or ["no output"]
        return done.stdout, [finding(f"npu-smi info exited {done.returncode}: {said[0]}",
                                     "the driver or firmware is not loaded: reinstall the Ascend driver matching "
                                     "this firmware (npu-smi info -t board -i 0 shows both), then reboot",
                                     fatal=True)]
    return done.stdout, []


def driver_version(smi_output: str | None) -> str | None:
    match = re.search(r"Version:\s*([\w.]+)", smi_output or "")
    return match.group(1) if match else None


def chips(smi_output: str | None) -> list[str]:
    """Chip names in `npu-smi info`'s table ('910B3', '910A', '910PremiumA')."""
    return re.findall(r"\|\s*\d+\s+(9\d\d\w*)\s", smi_output or "")


def visible_devices(environ: Mapping[str, str], nproc: int | None, device_count: int | None = None) -> list[dict]:
    """More processes than visible NPUs: torchrun starts them, and HCCL waits for ranks that
    never get a device (the hang Ascend users report)."""
    if not nproc or nproc <= 1:
        return []
    visible = environ.get("ASCEND_RT_VISIBLE_DEVICES")
    count = len([d for d in visible.split(",") if d.strip()]) if visible is not None else device_count
    if count is None or nproc <= count:
        return []
    where = f"ASCEND_RT_VISIBLE_DEVICES={visible}" if visible is not None else "this machine"
    return [finding(f"--nproc {nproc} but {where} shows {count} NPU(s): the extra processes have no device and HCCL "
                    "waits for them", f"run with --nproc {count}, or list {nproc} devices in ASCEND_RT_VISIBLE_DEVICES",
                    fatal=True)]


def precision(chip_names: list[str], bf16: bool | None) -> list[dict]:
    """910A (and 910 without B) has no bfloat16: portaft trains in fp16 with loss scaling there."""
    old = [c for c in chip_names if not c.startswith("910B") and c.startswith("910")]
    if old or bf16 is False:
        name = old[0] if old else "this NPU"
        return [finding(f"{name} has no bfloat16: recipes with bf16 train in float16 with loss scaling (a note says "
                        "so); losses differ from a bf16 GPU run more than Ascend's <2% bar in some runs",
                        "keep fp16 and watch for overflow (portaft stops a run whose loss becomes NaN), or train on a "
                        "910B for bf16")]
    return []


def fatal_before_import(environ: Mapping[str, str], versions: Mapping[str, str]) -> list[dict]:
    """The fatal findings that need no torch_npu import: what an npu run checks first."""
    found = set_env_not_sourced(environ) + torch_pairing(versions.get("torch"), versions.get("torch_npu"))
    local = environ.get("LOCAL_WORLD_SIZE")
    found += visible_devices(environ, int(local) if local else None)
    return [f for f in found if f["fatal"]]


def diagnose(environ: Mapping[str, str], versions: Mapping[str, str], cann: str | None, nproc: int | None,
             device_count: int | None, bf16: bool | None, run_smi: Any = None) -> dict[str, Any]:
    """Everything above, for `portaft doctor`: the facts found and the findings."""
    smi_output, smi_findings = npu_smi(run_smi)
    names = chips(smi_output)
    findings = (set_env_not_sourced(environ) + cann_pairing(cann, versions.get("torch_npu"))
                + torch_pairing(versions.get("torch"), versions.get("torch_npu")) + smi_findings
                + visible_devices(environ, nproc, device_count) + precision(names, bf16))
    facts = {"driver": driver_version(smi_output), "chips": names, "npu_smi": smi_output is not None,
             "visible_devices": environ.get("ASCEND_RT_VISIBLE_DEVICES"), "cann_table": TABLE_SOURCE}
    return {"facts": facts, "findings": findings}
