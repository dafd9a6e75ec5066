"""portaft doctor: versions, known-bad pairings with their fixes, a device smoke test."""

import json
import types

from portaft.cli import main
from portaft.checks.doctor import check_backend, pairing_problems


def test_known_bad_pairings_are_named_with_a_fix():
    problems = pairing_problems({"torch": "2.13.0+cpu", "torch_npu": "2.11.0", "transformers": "5.17.0",
                                 "openmind": "1.0.0", "peft": "0.9.0"})
    text = "\n".join(f"{p.what} | {p.fix}" for p in problems)
    assert ("torch 2.13.0+cpu and torch_npu 2.11.0 differ in major.minor: torch_npu will not load | "
            "pip install torch_npu==2.13.0") in text
    assert "openmind 1.0.0 cannot import with transformers 5.17.0" in text and "requirements/openmind.txt" in text
    assert "peft 0.9.0 is outside the versions portaft is tested with" in text
    assert pairing_problems({"torch": "2.13.0", "torch_npu": "2.13.0.post1", "transformers": "4.45.2",
                             "openmind": "1.0.0", "peft": "0.13.2"}) == []


def test_a_device_that_cannot_compute_fails_the_smoke_test():
    broken = types.SimpleNamespace(name="fake", device_type="nosuchdevice")
    check = check_backend(broken, None)
    assert check.available and check.smoke_test != "ok" and "RuntimeError" in check.smoke_test


def test_doctor_reports_every_backend_and_exits_by_its_problems(capsys):
    code = main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    backends = {b["name"]: b for b in report["backends"]}
    assert backends["cpu"]["available"] and backends["cpu"]["smoke_test"] == "ok"
    assert not backends["npu"]["available"] and "torch_npu" in backends["npu"]["reason"]
    assert backends["npu"]["library"].startswith("npu: ")
    assert {"torch", "transformers", "peft", "python"} <= set(report["versions"])
    assert code == (3 if report["problems"] else 0)
