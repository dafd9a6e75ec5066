"""The docs stay true: the plugin page shows the real plugin, and every hook is documented and tested."""

import re
from pathlib import Path

from portaft.plugins import hookspecs

REPO = Path(__file__).resolve().parents[2]


def code_blocks(markdown: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```\w*\n(.*?)```", markdown, flags=re.S)]


def test_plugin_page_shows_the_plugin_package_verbatim():
    blocks = code_blocks((REPO / "docs" / "plugins.md").read_text(encoding="utf-8"))
    for path in ("plugins/portaft-mps/pyproject.toml", "plugins/portaft-mps/portaft_mps/__init__.py"):
        assert (REPO / path).read_text(encoding="utf-8").strip() in blocks, path


def test_every_hook_is_documented_and_tested():
    hooks = [name for name in dir(hookspecs) if name.startswith("register_")]
    assert hooks == ["register_backends", "register_callbacks", "register_formats", "register_speed_ups",
                     "register_templates"]
    page = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    tests = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "tests").rglob("test_*.py") if p.name != "test_docs.py")
    for hook in hooks:
        assert re.search(rf"`{hook}\(register(, \w+)*\)`", page), hook
        assert getattr(hookspecs, hook).__doc__, hook
        assert hook in tests, hook


def test_readme_commands_match_ci():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    test_command = "pip install torch==2.13.0 -e '.[dev]' && python -m pytest tests"
    assert test_command in readme and test_command in ci


def test_the_ascend_page_names_every_npu_speed_up_setting_and_simulated_operator():
    import npu_doubles
    from portaft.backends import npu_platform
    from portaft.backends.npu import NpuBackend

    page = (REPO / "docs" / "ascend.md").read_text(encoding="utf-8")
    assert "Nothing on this page has run on Ascend hardware" in page
    for speed_up in NpuBackend.SPEED_UPS[2:]:
        assert f"| `{speed_up.NAME}`" in page, speed_up.NAME
    for name, value, _ in npu_platform.ENVIRONMENT + npu_platform.SEVERAL_PROCESSES:
        assert f"`{name}`" in page and value in page, name
    for operator in (*npu_doubles.OPS, "NpuFusedAdamW"):
        assert f"| `{operator}` |" in page, operator
        assert "hiascend.com" in (npu_doubles.OPS.get(operator) or npu_doubles.NpuFusedAdamW).__doc__, operator


def test_every_command_block_runs_or_says_why_not():
    """tests/runs/test_snippets.py runs each bash/python block; the few it leaves out say why."""
    from snippets import RUNNABLE, snippets, to_run

    found = snippets()
    left_out = [s for s in found if s.language in RUNNABLE and s.not_run]
    assert all(len(s.not_run) > 10 for s in left_out)
    # keep the list short: what CI's CPU machine cannot run (GPU, NPU, several machines, Ollama), synopses
    assert len(left_out) <= 14, [s.where for s in left_out]
    first = to_run()[0]
    assert first.where.startswith("README.md") and first.as_run().startswith(
        "# 1.") and "pip install" not in first.as_run().splitlines()[-1]
    assert "portaft run examples/self_identity.yaml" in first.as_run()
