"""portaft parity: two backends (or a stored curve) step by step, pass or fail."""

import json

from portaft.cli import main


def test_cpu_and_npu_on_cpu_agree_exactly_in_fp32(write_recipe, recipe_dict, capsys):
    """In the openMind environment npu:cpu trains through openMind's classes: still exact."""
    code = main(["parity", str(write_recipe(recipe_dict)), "--backends", "cpu,npu:cpu", "--steps", "3",
                 "--tolerance", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASS: largest relative difference 0.000e+00 over 3 steps (tolerance 0, fp32)" in out
    assert ["step", "cpu", "npu:cpu", "rel.", "diff"] in [line.split() for line in out.splitlines()]


def test_a_golden_curve_is_saved_compared_and_a_drift_fails_with_exit_3(write_recipe, recipe_dict, tmp_path, capsys):
    recipe = str(write_recipe(recipe_dict))
    golden = tmp_path / "golden.json"
    assert main(["parity", recipe, "--backends", "cpu", "--steps", "3", "--save-golden", str(golden)]) == 0
    stored = json.loads(golden.read_text(encoding="utf-8"))
    assert stored["target"] == "cpu" and len(stored["losses"]) == 3 and "torch" in stored["versions"]
    assert main(["parity", recipe, "--backends", "cpu", "--steps", "3", "--against", str(golden)]) == 0
    stored["losses"][2] *= 1.01
    golden.write_text(json.dumps(stored), encoding="utf-8")
    capsys.readouterr()
    assert main(["parity", recipe, "--backends", "cpu", "--steps", "3", "--against", str(golden)]) == 3
    assert "FAIL: largest relative difference 9.901e-03 over 3 steps" in capsys.readouterr().out


def test_parity_mistakes_exit_2(write_recipe, recipe_dict, capsys):
    recipe = str(write_recipe(recipe_dict))
    assert main(["parity", recipe, "--backends", "cpu"]) == 2
    assert main(["parity", recipe, "--backends", "cpu,npu:gpu"]) == 2
    err = capsys.readouterr().err
    assert "give two targets" in err and "the part after ':' is a device" in err
