"""Every module of `harness` and `analysis` imports on its own, and no modules import each other in a cycle.

The cycle check reads the import statements (top-level and inside functions, which are cycles too, only
deferred) from the source with `ast`, so it needs no imports itself and names the cycle it finds.
"""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "analysis")


def package_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__main__":  # runs the program when imported: `python -m` only
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


MODULES = package_modules()


def imported_modules(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports anywhere in its source (a package's __init__ for a name
    it defines, the submodule for `from package import submodule`)."""

    def known(candidate: str) -> str | None:
        while candidate and candidate not in MODULES:
            candidate = candidate.rpartition(".")[0]
        return candidate or None

    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names
            ]
        for target in targets:
            module = known(target)
            if module is not None and module != name:
                found.add(module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: imported_modules(name, path) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for neighbour in sorted(graph[node]):
            if state.get(neighbour) == 1:
                return [*path[path.index(neighbour) :], neighbour]
            if neighbour not in state and (cycle := visit(neighbour)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_graph_sees_the_imports_it_should() -> None:
    graph = import_graph()
    assert "harness.cli.training" in graph["harness.cli.commands"]
    assert "harness.engine.lifecycle" in graph["harness.studies.probe"]
    # `from harness.sparse import criteria` (under TYPE_CHECKING: what a lazy module stands for counts)
    assert "harness.sparse.criteria" in graph["harness.sparse.methods.base"]
    assert "harness.sparse" not in graph["harness.sparse.methods.base"]
    assert "harness.studies.probe" in graph["harness.launch.training"]  # an import inside a function counts


def test_the_cycle_finder_names_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_the_package() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    """Each module is imported by a process in which no module of the package was imported before.

    A driver interpreter imports only third-party libraries (torch alone takes ~3 s, paid once, not once
    per module) and forks one child per module; the child imports that module and nothing else of ours,
    so a module that works only after another of the package was imported fails here."""
    driver = (
        "import os, sys, traceback\n"
        "import numpy, pandas, scipy.stats, torch, typer, pydantic, yaml\n"
        "assert not any(m.split('.')[0] in ('harness', 'analysis') for m in sys.modules)\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    read, write = os.pipe()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os.close(read)\n"
        "        code = 0\n"
        "        try:\n"
        "            __import__(name)\n"
        "        except BaseException as error:\n"
        "            os.write(write, f'{type(error).__name__}: {error}'.encode())\n"
        "            code = 1\n"
        "        os._exit(code)\n"
        "    os.close(write)\n"
        "    message = os.read(read, 4096).decode()\n"
        "    os.close(read)\n"
        "    _, status = os.waitpid(pid, 0)\n"
        "    if os.waitstatus_to_exitcode(status):\n"
        "        failed.append(f'{name}: {message or status}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", driver, *MODULES], capture_output=True, text=True, cwd=ROOT, env=environment
    )
    assert result.returncode == 0, f"modules that fail to import alone:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize(
    "module",
    [
        "harness.cli",
        "harness.registry.models",
        "harness.registry.datasets",
        "harness.sparse.methods.registry",
        "harness.config",
        "harness.studies.plan",
        "harness.launch.planning",
        "harness.launch.torchrun",
    ],
)
def test_names_and_the_launcher_import_without_torch(module: str) -> None:
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment).returncode == 0


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen: set[str] = set()
    pending = [start]
    while pending:
        for neighbour in graph[pending.pop()] - seen:
            seen.add(neighbour)
            pending.append(neighbour)
    return seen


def test_the_engine_imports_no_study() -> None:
    graph = import_graph()
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.startswith("harness.engine")
        for target in targets
        if target.startswith("harness.studies")
    )
    assert upward == []


def test_study_planning_reaches_neither_the_engine_nor_torch() -> None:
    """Planning a sweep or a dry run resolves the study's configs without the training code: the planner
    reaches the study's plan, and the plan imports nothing of the engine or the probe, nor torch itself."""
    graph = import_graph()
    assert graph["harness.studies.plan"] == {"harness.config", "harness.errors"}
    reached = reachable(graph, "harness.launch.planning")
    assert "harness.studies.plan" in reached
    assert sorted(m for m in reached if m.startswith(("harness.engine", "harness.studies.probe"))) == []
    source = ast.parse(MODULES["harness.studies.plan"].read_text())
    imported = {
        alias.name for node in ast.walk(source) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {node.module for node in ast.walk(source) if isinstance(node, ast.ImportFrom) and node.module}
    assert sorted(name for name in imported if name.split(".")[0] == "torch") == []


# The concept folders from top to bottom (DESIGN section 3): an import may only point to a lower layer or
# across one layer. `harness.errors`, the one exception type every layer raises, is a leaf outside the folders.
LAYERS = (
    ("harness.cli",),
    ("harness.launch", "analysis"),
    ("harness.studies", "harness.inference"),
    ("harness.engine",),
    ("harness.data", "harness.models", "harness.store"),
    ("harness.config",),
    ("harness.sparse",),
    ("harness.registry",),
)
LEAVES = ("harness", "harness.errors")  # the package itself (a docstring) and its one exception type
MAX_FOLDER_CHAIN = 8


def folder_of(module: str) -> str:
    parts = module.split(".")
    return "analysis" if parts[0] == "analysis" else ".".join(parts[:2])


def folder_graph() -> dict[str, set[str]]:
    folders: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        source = folder_of(module)
        folders.setdefault(source, set())
        for target in targets:
            if folder_of(target) not in (source, *LEAVES):
                folders[source].add(folder_of(target))
    return folders


def test_every_folder_has_a_layer_and_imports_only_downward_or_across() -> None:
    layer = {folder: index for index, folders in enumerate(LAYERS) for folder in folders}
    graph = folder_graph()
    assert sorted(set(graph) - set(layer) - set(LEAVES)) == []  # a new folder must be placed in LAYERS
    upward = sorted(
        f"{source} -> {target}" for source, targets in graph.items() if source in layer
        for target in targets if layer[target] < layer[source]
    )  # fmt: skip
    assert upward == []


def test_the_longest_chain_of_folders_is_short() -> None:
    """Folders import each other without cycles, and the longest chain of folders (cli -> launch -> studies
    -> engine -> data -> config -> sparse -> registry) stays within MAX_FOLDER_CHAIN levels."""
    graph = folder_graph()
    assert find_cycle(graph) is None, find_cycle(graph)

    @functools.cache
    def longest(folder: str) -> tuple[str, ...]:
        return max(((folder, *longest(target)) for target in graph[folder]), key=len, default=(folder,))

    chain = max((longest(folder) for folder in graph), key=len)
    assert len(chain) <= MAX_FOLDER_CHAIN, " -> ".join(chain)
