"""`portaft doctor` on a Python that recompiles the libraries at every launch (portaft/checks/bytecode.py)."""

import importlib.util
import py_compile
import types

import pytest

from portaft.checks import bytecode


def module(tmp_path, name, compiled=True):
    source = tmp_path / "site-packages" / f"{name}.py"  # an installed library's module
    source.parent.mkdir(exist_ok=True)
    source.write_text(f"X = {name!r}\n")
    found = types.ModuleType(name)
    found.__file__, found.__cached__ = str(source), importlib.util.cache_from_source(str(source))
    if compiled:
        py_compile.compile(str(source), cfile=found.__cached__, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    return found


def test_bytecode_counts_as_python_would_use_it(tmp_path):
    fresh = module(tmp_path, "fresh")
    missing = module(tmp_path, "missing", compiled=False)
    edited = module(tmp_path, "edited")
    with open(edited.__file__, "a") as file:  # the source changed after it was compiled: its size no longer matches
        file.write("Y = 2\n")
    builtin = types.ModuleType("builtin")  # no file: nothing to compile
    own = module(tmp_path, "own", compiled=False)  # a checkout's module, not a library's: not counted
    own.__file__ = str(tmp_path / "checkout" / "own.py")
    found = {"fresh": fresh, "missing": missing, "edited": edited, "b": builtin, "own": own}
    assert bytecode.stale_modules(found) == (3, 2)


def test_doctor_says_so_only_where_python_may_not_keep_what_it_compiles(tmp_path):
    many = {f"m{i}": module(tmp_path, f"m{i}", compiled=False) for i in range(bytecode.STALE_ENOUGH)}
    found = bytecode.bytecode_findings(many, dont_write=True, prefix=None)
    assert len(found) == 1
    assert f"{bytecode.STALE_ENOUGH} of the {bytecode.STALE_ENOUGH} library modules" in found[0]["what"]
    assert "PYTHONPYCACHEPREFIX" in found[0]["fix"] and "PYTHONDONTWRITEBYTECODE" in found[0]["fix"]
    assert bytecode.bytecode_findings(many, dont_write=False, prefix=None) == []  # it writes them on this launch
    few = dict(list(many.items())[:10])
    assert bytecode.bytecode_findings(few, dont_write=True, prefix=None) == []


def test_a_run_says_it_in_one_line_and_reads_nothing_where_python_writes_bytecode(tmp_path, monkeypatch):
    many = {f"m{i}": module(tmp_path, f"m{i}", compiled=False) for i in range(bytecode.STALE_ENOUGH)}
    monkeypatch.setattr(bytecode.sys, "modules", many)
    monkeypatch.setattr(bytecode.sys, "dont_write_bytecode", True)
    line = bytecode.recompiling()
    assert line.startswith("Python may not write bytecode here") and "to start faster: keep the compiled" in line
    monkeypatch.setattr(bytecode, "stale_modules", lambda modules: pytest.fail("read where Python writes bytecode"))
    monkeypatch.setattr(bytecode.sys, "dont_write_bytecode", False)
    assert bytecode.recompiling() is None
