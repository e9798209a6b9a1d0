"""The layout the developers' guide fixes: a core that names no method and imports
without cycles, and one folder per method."""

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from strategies import METHODS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pollen", "strategies", "server_app", "client_app")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The repository's modules that ``name`` imports anywhere in its file (function-level
    imports count: they are edges too)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parents + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_the_import_graph_has_no_cycle():
    graph = {name: imports_of(name) for name in MODULES}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_core_never_imports_a_method_or_an_app():
    core = [name for name in MODULES if name.split(".")[0] == "pollen"]
    for name in core:
        outside = {t for t in imports_of(name) if t.split(".")[0] != "pollen"}
        assert not outside, f"{name} imports {sorted(outside)}"


def test_the_core_names_no_method_outside_its_docs():
    """No method name appears in pollen/'s code (docstrings and comments aside), but for
    the default of the ``strategy`` key."""
    names = set(METHODS) | {name.replace("-", "_") for name in METHODS}
    for name, path in MODULES.items():
        if name.split(".")[0] != "pollen" or ".v1." in f".{name}.":
            continue
        source = path.read_text().replace('strategy: str = setting("fedavg")', "")
        tree = ast.parse(source)
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            words = []
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docstrings:
                words = node.value.lower().replace("'", " ").split()
            elif isinstance(node, ast.Name):
                words = [node.id.lower()]
            elif isinstance(node, ast.Attribute):
                words = [node.attr.lower()]
            assert not names & set(words), f"{name} names {names & set(words)}: {words}"


@pytest.mark.slow  # one interpreter per module, two at a time (the machine's cores)
def test_each_core_module_imports_alone_in_a_fresh_interpreter():
    def imports_alone(name: str) -> str:
        done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        return "" if done.returncode == 0 else f"{name}: {done.stderr[-500:]}"

    names = sorted(n for n in MODULES if n.split(".")[0] == "pollen")
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [failure for failure in pool.map(imports_alone, names) if failure]
    assert not failures


def test_every_method_is_one_folder_with_its_config_strategy_and_spec():
    for name, spec in METHODS.items():
        folder = ROOT / "strategies" / name.replace("-", "_")
        assert (folder / "strategy.py").is_file() and (folder / "__init__.py").is_file()
        assert spec.config is None or (folder / "config.py").is_file()
        assert spec.config is None or spec.config.name == name
        client_half = type(spec.client).__module__
        assert client_half == "strategies.spec" or client_half == (
            f"strategies.{folder.name}.client"), client_half
