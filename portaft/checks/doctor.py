"""What is installed, whether it is known to work together, and whether each backend's
device really computes: `portaft doctor`. Every problem comes with a fix."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import Version

from portaft.runner.outputs import library_versions

from . import ascend, bytecode

# Ranges the test suites run on (main CI environment and the openMind one).
TESTED = {"transformers": ("4.45.2", "6"), "peft": ("0.13.2", "0.22")}  # [low, high)
OPENMIND_TRANSFORMERS_MAX = "4.45.2"  # openmind 1.0.0 pins it; its import fails from 4.48 on
OPENMIND_FIX = ("give openMind its own environment: pip install -c requirements/openmind.txt "
                "-r requirements/openmind.txt -e . (README: Running on Ascend)")


@dataclass
class Problem:
    what: str
    fix: str
    fatal: bool = False  # a run on the backend concerned cannot work until it is fixed


@dataclass
class BackendCheck:
    name: str
    available: bool
    reason: str | None = None
    device_count: int | None = None
    bf16: bool | None = None
    smoke_test: str | None = None  # "ok", or what went wrong
    library: str | None = None  # which classes it trains with, where the backend says


@dataclass
class Report:
    versions: dict[str, str]
    cann: str | None
    backends: list[BackendCheck] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ascend: dict[str, Any] | None = None  # what checks/ascend.py found (driver, chips), where Ascend is installed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pairing_problems(versions: dict[str, str]) -> list[Problem]:
    """Version combinations known not to work, each with its fix."""
    problems = []
    torch, npu = versions.get("torch"), versions.get("torch_npu")
    problems += [Problem(**f) for f in ascend.torch_pairing(torch, npu)]  # major.minor, then patch
    transformers, openmind = versions.get("transformers"), versions.get("openmind")
    if openmind and transformers and Version(transformers) > Version(OPENMIND_TRANSFORMERS_MAX):
        problems.append(Problem(f"openmind {openmind} cannot import with transformers {transformers} "
                                f"(it needs <= {OPENMIND_TRANSFORMERS_MAX})", OPENMIND_FIX))
    for name, (low, high) in TESTED.items():
        have = versions.get(name)
        if have and not Version(low) <= Version(have) < Version(high):
            problems.append(Problem(f"{name} {have} is outside the versions portaft is tested with (>={low}, <{high})",
                                    f"pip install '{name}>={low},<{high}'"))
    return problems


def find_cann() -> str | None:
    """The CANN toolkit's version, from the usual install places; None when not found."""
    roots = [os.environ.get(v) for v in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH")]
    roots += ["/usr/local/Ascend/ascend-toolkit/latest"]
    for root in filter(None, roots):
        for name in ("version.cfg", "compiler/version.info", "runtime/version.info"):
            path = Path(root) / name
            if path.is_file():
                for line in path.read_text(errors="replace").splitlines():
                    if "version" in line.lower() and "=" in line:
                        return f"{line.split('=', 1)[1].strip()} ({root})"
                return f"found ({root})"
    return None


def check_backend(backend: Any, unavailable_reason: str | None) -> BackendCheck:
    """`unavailable_reason`: the plugins' verdict (`Plugins.unavailable_reason`, which a
    raising availability check cannot crash); None when the backend is available."""
    available = unavailable_reason is None
    check = BackendCheck(backend.name, available, unavailable_reason)
    library_note = getattr(backend, "library_note", None)
    check.library = library_note() if callable(library_note) else None
    if not available:
        return check
    import torch

    device_type = backend.device_type
    module = getattr(torch, device_type, None)
    if device_type != "cpu" and module is not None and hasattr(module, "device_count"):
        check.device_count = int(module.device_count())
    if hasattr(module, "is_bf16_supported"):
        check.bf16 = bool(module.is_bf16_supported())
    try:  # a tiny matmul on the device must equal the CPU's
        a = torch.arange(12, dtype=torch.float32).reshape(3, 4)
        on_device = (a.to(device_type) @ a.T.to(device_type)).cpu()
        check.smoke_test = "ok" if torch.allclose(on_device, a @ a.T) else "wrong result from a 3x4 matmul"
    except Exception as exc:  # the point is to catch a broken driver or runtime
        check.smoke_test = f"{type(exc).__name__}: {exc}"
    return check


def diagnose(nproc: int | None = None) -> Report:
    """`nproc`: the processes a run is meant to start (`portaft doctor --nproc N`)."""
    from portaft.plugins import get_plugins

    versions = library_versions()
    report = Report(versions, find_cann(), problems=pairing_problems(versions))
    plugins = get_plugins()
    for backend in plugins.backends.values():
        check = check_backend(backend, plugins.unavailable_reason(backend))
        report.backends.append(check)
        if check.smoke_test not in (None, "ok"):
            report.problems.append(Problem(f"backend {check.name}: the device smoke test failed: {check.smoke_test}",
                                           f"check the {check.name} driver/runtime install (`portaft backends`)"))
    report.problems += [Problem(**f) for f in bytecode.bytecode_findings(sys.modules, sys.dont_write_bytecode,
                                                                         sys.pycache_prefix)]
    if "torch_npu" in versions and report.cann is None:
        report.problems.append(Problem("torch_npu is installed but no CANN toolkit was found",
                                       "install CANN and `source <CANN>/set_env.sh` (sets ASCEND_TOOLKIT_HOME)", True))
    if "torch_npu" in versions or report.cann is not None or Path(ascend.DEFAULT_TOOLKIT).is_dir():
        npu = next((c for c in report.backends if c.name == "npu"), None)
        found = ascend.diagnose(os.environ, versions, report.cann, nproc, npu and npu.device_count, npu and npu.bf16)
        report.ascend = found["facts"]
        torch_findings = {p.what for p in report.problems}
        report.problems += [Problem(**f) for f in found["findings"] if f["what"] not in torch_findings]
    return report
