"""The shape of the code a newcomer reads: run() as its steps, small modules, no import circle."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "portaft"


def _module_of(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _file_of(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[Path]:
    """portaft's files that `path` imports anywhere in it (inside functions and under
    TYPE_CHECKING too): the most specific module each import names."""
    here = _module_of(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{alias.name}" if _file_of(f"{base}.{alias.name}") else base for alias in node.names]
        else:
            continue
        for name in names:
            target = _file_of(name) if name.split(".")[0] == "portaft" else None
            if target is not None and target != path:
                found.add(target)
    return found


def test_no_module_imports_one_that_imports_it_back():
    graph = {path: _imports(path) for path in PACKAGE.rglob("*.py")}
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(str(p.relative_to(REPO)) for p in component))

    for node in graph:
        if node not in index:
            visit(node)
    assert circles == []


def test_no_module_is_over_400_lines():
    long = {str(path.relative_to(REPO)): lines for path in [*PACKAGE.rglob("*.py"), *(REPO / "bench").rglob("*.py")]
            if (lines := len(path.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}


def test_run_reads_as_its_steps():
    tree = ast.parse((PACKAGE / "runner" / "__init__.py").read_text(encoding="utf-8"))
    run = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "run")
    assert run.end_lineno - run.lineno + 1 <= 40
    calls = [node.func.id for node in ast.walk(run) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
    steps = ["resolve", "enter", "read_data", "load_model", "make_plan", "train", "save"]
    assert [call for call in calls if call in steps] == steps


def test_the_recipe_reaches_no_plugin_state():
    for path in (PACKAGE / "recipe").glob("*.py"):
        assert not any(p.is_relative_to(PACKAGE / "plugins") for p in _imports(path)), path
