"""The house rules of the code base, checked on every run: imports only run down the layers of
the data's way, no module imports itself back through a cycle, and modules and functions stay
small enough to read.

The layers, bottom first. A module may import its own room and the rooms of lower layers; rooms
on the same layer stay independent of each other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"core"}),
    frozenset({"loaders"}),
    frozenset({"validation"}),
    frozenset({"embeddings"}),
    frozenset({"screening"}),
    frozenset({"store"}),
    frozenset({"flows", "serving"}),
    frozenset({"evaluation"}),  # runs the whole path (ingest and answer) and reads its logs
    frozenset({"api"}),  # the entry points, in freshkb/ itself: the HTTP API,
    frozenset({"cli"}),  # and the CLI, whose `serve` runs the API
)
ROOM_LAYER = {room: index for index, rooms in enumerate(LAYERS) for room in rooms}
ROOMS_LINKED = sorted(ROOM_LAYER.keys() - {"cli", "api"})

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Longer functions, each with the reason it reads better whole.
LONG_FUNCTIONS: dict[str, str] = {}


@dataclass(frozen=True)
class Module:
    """One source file of the package, with its dotted name."""

    name: str
    path: Path

    @property
    def room(self) -> str:
        """The room (step folder) the module belongs to."""
        return room_of(self.name)


def room_of(name: str) -> str:
    """freshkb.<room>.… -> room; the package's own modules are the entry points (cli, api)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOM_LAYER else "cli"


def package_modules() -> list[Module]:
    """Every module of the installed `freshkb` package, read from the real folders."""
    found = []
    for room in ROOMS_LINKED:
        folder = REPO / room
        if folder.is_dir():
            found += [_module(f"freshkb.{room}", folder, path) for path in folder.rglob("*.py")]
    own = REPO / "freshkb"
    found += [
        _module("freshkb", own, path)
        for path in own.rglob("*.py")
        if not any(part in ROOMS_LINKED for part in path.relative_to(own).parts)
    ]
    return found


def _module(prefix: str, folder: Path, path: Path) -> Module:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return Module(".".join([prefix, *parts]), path)


def import_statements(module: Module) -> Iterator[tuple[int, list[str]]]:
    """(line, dotted names) of every import statement at any depth, outside TYPE_CHECKING.

    `from a.b import c` gives ["a.b.c", "a.b"]: the module c if it is one, else a.b itself.
    """
    tree = ast.parse(module.path.read_text(encoding="utf-8"))
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    package = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            yield from ((node.lineno, [alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield node.lineno, [f"{base}.{alias.name}", base]


def imported_names(module: Module) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every import, the imported module where the name is one."""
    for line, candidates in import_statements(module):
        yield line, candidates[-1]


def project_imports(module: Module, names: set[str]) -> set[str]:
    """The project modules `module` imports (an imported name resolves to its module)."""
    found = set()
    for _, candidates in import_statements(module):
        target = next((name for name in candidates if name in names), None)
        if target is not None and target != module.name:
            found.add(target)
    return found


def test_the_rooms_are_linked_into_the_package() -> None:
    for room in ROOMS_LINKED:
        link = REPO / "freshkb" / room
        if (REPO / room).is_dir():
            assert link.is_symlink() and link.resolve() == (REPO / room).resolve(), link


def test_code_imports_the_rooms_only_through_the_freshkb_package() -> None:
    bare = {room for room in ROOMS_LINKED}
    offenders = [
        f"{module.path.relative_to(REPO)}:{line}: import {name}"
        for module in package_modules()
        for line, name in imported_names(module)
        if name.split(".")[0] in bare
    ]
    assert not offenders, "\n".join(offenders)


def test_imports_never_run_up_a_layer_or_across_sibling_rooms() -> None:
    modules = package_modules()
    names = {module.name for module in modules}
    offenders = []
    for module in modules:
        for target in project_imports(module, names):
            room = room_of(target)
            if room == module.room:
                continue
            if ROOM_LAYER[room] >= ROOM_LAYER[module.room]:
                offenders.append(f"{module.name} ({module.room}) imports {target} ({room})")
    assert not offenders, "\n".join(sorted(offenders))


def test_no_import_cycles_between_modules() -> None:
    modules = package_modules()
    names = {module.name for module in modules}
    graph = {module.name: project_imports(module, names) for module in modules}
    cycles = _cycles(graph)
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_modules_fit_in_a_readers_head() -> None:
    long = {
        str(module.path.relative_to(REPO)): lines
        for module in package_modules()
        if (lines := len(module.path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_functions_read_as_a_short_list_of_steps() -> None:
    long = {}
    for module in package_modules():
        for node in ast.walk(ast.parse(module.path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{module.name}:{node.name}"
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                    long[name] = lines
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    planted = tmp_path / "records.py"
    planted.write_text("from freshkb.serving.service import AnswerService\n", encoding="utf-8")
    module = Module("freshkb.core.records", planted)
    imported = project_imports(module, {"freshkb.serving.service"})
    assert imported == {"freshkb.serving.service"}
    assert ROOM_LAYER["serving"] > ROOM_LAYER[module.room]


def test_cycle_check_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
