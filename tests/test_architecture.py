"""The architecture holds: layers, sizes, what plugins import, one backend seam.

Read from the source (AST only, wf78 is never imported), so a violation names its file and
line. `lint-imports` (pyproject's `[tool.importlinter]`) holds the same layers in CI; these
checks add the sizes, the backend seam, and a message a reader can act on. Each checker takes
the repository root, and a small test below proves it catches a planted violation.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = "wf78_core"

# Top first; a part imports only parts in later layers. Siblings in an independent layer do
# not import each other; the leaf modules may (they are small types that refer to each other).
LAYERS: tuple[tuple[frozenset[str], bool], ...] = (
    (frozenset({"cli"}), True),
    (frozenset({"http"}), True),
    (frozenset({"engine"}), True),
    (frozenset({"data", "cluster", "persistence"}), True),
    (frozenset({"core"}), True),
    (frozenset({"plugin"}), True),
    (frozenset({"config"}), True),
    (frozenset({"errors", "definitions", "ids", "events", "idempotency"}), False),
)
LAYER_OF: dict[str, int] = {part: i for i, (parts, _) in enumerate(LAYERS) for part in parts}

# What a plugin may import of wf78: the public names and the plugin SDK, as a third party would.
PLUGIN_IMPORTS = frozenset({CORE, f"{CORE}.plugin"})

MODULE_LINES = 600
FUNCTION_LINES = 80  # for a function with any branching
CLASS_LINES = 400
# Modules allowed over MODULE_LINES because they are only data: path -> why.
LONG_DATA_MODULES: dict[str, str] = {}

# Where the backend is chosen by configuration, never asked about.
BACKEND_NEUTRAL = ("wf78_core/core", "wf78_core/engine.py")
SHARED_NAME = re.compile(r"^_*(is_)?shared$", re.IGNORECASE)
BACKEND_NAME = re.compile(r"redis|shared|stream|cluster", re.IGNORECASE)

BRANCHES = (ast.If, ast.IfExp, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.TryStar, ast.Match)
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


# --- reading the tree -------------------------------------------------------------------------


def _files(root: Path, folder: str) -> Iterator[Path]:
    yield from sorted((root / folder).rglob("*.py"))


def _where(root: Path, path: Path, line: int = 0) -> str:
    name = path.relative_to(root).as_posix()
    return f"{name}:{line}" if line else name


def _module_name(base: Path, path: Path) -> str:
    """`wf78_core/core/runs.py` -> `wf78_core.core.runs`, relative to the folder on sys.path."""
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _exists(base: Path, module: str) -> bool:
    path = base.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(root: Path, base: Path, path: Path) -> list[tuple[int, str, bool]]:
    """Every module `path` imports, anywhere in it (functions, `if TYPE_CHECKING:` blocks), as
    (line, absolute module name, relative?). `from pkg import sub` names the submodule when
    `sub` is one, as the import system (and grimp) does; constant-string dynamic imports count."""
    return sorted(set(_walk_imports(root, base, path)))


def _walk_imports(root: Path, base: Path, path: Path) -> Iterator[tuple[int, str, bool]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    module = _module_name(base, path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, False
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                target = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                target = node.module or ""
            if target == "__future__":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                # The root of wf78 may live elsewhere than the importing file (plugins/).
                found = _exists(root, sub) or _exists(base, sub)
                yield node.lineno, sub if found else target, bool(node.level)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value, False


def _part(module: str) -> str | None:
    """The part of wf78_core a module belongs to; None for the root package itself."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else None


def _core_edges(root: Path) -> Iterator[tuple[Path, int, str, str, str, bool]]:
    """(file, line, importer part, imported module, imported part, relative?) for every import
    from one module of wf78_core into wf78_core. The root `__init__` (the public facade) is
    left out: it re-exports from every part."""
    for path in _files(root, CORE):
        importer = _part(_module_name(root, path))
        if importer is None:
            continue
        for line, target, relative in _imports(root, root, path):
            if target == CORE or target.startswith(f"{CORE}."):
                yield path, line, importer, target, _part(target) or "", relative


# --- checkers: each returns "file:line: what is wrong" lines ----------------------------------


def oversized_modules(
    root: Path, limit: int = MODULE_LINES, allowed: dict[str, str] | None = None
) -> list[str]:
    allowed = LONG_DATA_MODULES if allowed is None else allowed
    found = []
    for path in _files(root, CORE):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit and _where(root, path) not in allowed:
            found.append(
                f"{_where(root, path)}: module of {lines} lines (limit {limit}): split it by "
                "idea, or, if it is only a data literal, add it to LONG_DATA_MODULES with why"
            )
    return found


def _own_branches(function: ast.AST) -> int:
    """Branches in the function's own body; nested functions and classes count for themselves."""
    count = 0
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        if isinstance(node, (*FUNCTIONS, ast.ClassDef)):
            continue
        count += isinstance(node, BRANCHES)
        stack.extend(ast.iter_child_nodes(node))
    return count


def long_functions_and_classes(
    root: Path, function_limit: int = FUNCTION_LINES, class_limit: int = CLASS_LINES
) -> list[str]:
    found = []
    for path in _files(root, CORE):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        long: list[tuple[int, str]] = []
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if isinstance(node, ast.ClassDef):
                if lines > class_limit:
                    long.append(
                        (
                            node.lineno,
                            f"class {node.name} of {lines} lines (limit {class_limit}): "
                            "split it by what changes together",
                        )
                    )
            elif lines > function_limit and (branches := _own_branches(node)):
                long.append(
                    (
                        node.lineno,
                        f"function {node.name} of {lines} lines with {branches} branches "
                        f"(limit {function_limit}): split it",
                    )
                )
        found += [f"{_where(root, path, line)}: {why}" for line, why in sorted(long)]
    return found


def layer_violations(root: Path) -> list[str]:
    found = []
    for path, line, importer, target, imported, relative in _core_edges(root):
        where = _where(root, path, line)
        if relative:
            found.append(f"{where}: relative import of {target}; use `from {target} import ...`")
        if not imported:
            found.append(
                f"{where}: imports the root package {CORE} (only tests, examples, benchmarks "
                "and plugins may); import from the part that defines the name"
            )
            continue
        for part in (importer, imported):
            if part not in LAYER_OF:
                found.append(f"{where}: {CORE}.{part} is in no layer; add it to LAYERS")
        if importer == imported or importer not in LAYER_OF or imported not in LAYER_OF:
            continue
        above, below = LAYER_OF[importer], LAYER_OF[imported]
        if below < above:
            found.append(
                f"{where}: {importer} imports {target}, from the {imported} layer above it; "
                "pass it in as an argument or declare a Protocol in the lower part"
            )
        elif below == above and LAYERS[above][1]:
            found.append(
                f"{where}: {importer} imports {target}, from its independent sibling {imported}"
            )
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def import_cycles(root: Path) -> list[str]:
    """Cycles between the children of any one package of wf78_core (the parts, or the modules
    of one part), each child standing for everything inside it, as import-linter's
    `acyclic_siblings` sees them."""
    packages = sorted(
        _module_name(root, path) for path in _files(root, CORE) if path.name == "__init__.py"
    )
    edges: dict[str, dict[str, set[str]]] = {package: {} for package in packages}
    first: dict[tuple[str, str], str] = {}
    for path in _files(root, CORE):
        importer = _module_name(root, path)
        for line, target, _relative in _imports(root, root, path):
            for package in packages:
                if not (importer.startswith(f"{package}.") and target.startswith(f"{package}.")):
                    continue
                a = importer.removeprefix(f"{package}.").split(".")[0]
                b = target.removeprefix(f"{package}.").split(".")[0]
                if a != b:
                    edges[package].setdefault(a, set()).add(b)
                    first.setdefault((f"{package}.{a}", f"{package}.{b}"), _where(root, path, line))
    found = []
    for package in packages:
        for component in _cycles(edges[package]):
            via = sorted(
                f"{a} -> {b} ({first[f'{package}.{a}', f'{package}.{b}']})"
                for a in component
                for b in edges[package].get(a, ())
                if b in component
            )
            found.append(f"cycle in {package} between {', '.join(component)}: {'; '.join(via)}")
    return found


def plugin_import_violations(root: Path) -> list[str]:
    found = []
    plugins = root / "plugins"
    for path in _files(root, "plugins"):
        for line, target, _relative in _imports(root, plugins, path):
            if (target == CORE or target.startswith(f"{CORE}.")) and target not in PLUGIN_IMPORTS:
                found.append(
                    f"{_where(root, path, line)}: plugin imports {target}; plugins import only "
                    f"{' or '.join(sorted(PLUGIN_IMPORTS))}, as a third party would"
                )
    return found


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _backend_branch(node: ast.AST) -> str | None:
    """Why `node` asks which backend it has, or None."""
    if isinstance(node, ast.Name | ast.Attribute) and SHARED_NAME.match(_name(node)):
        return f"`{ast.unparse(node)}`: the core does not ask which backend it has"
    if (
        isinstance(node, ast.Compare)
        and not SHARED_NAME.match(_name(node.left))  # reported as a name
        and all(isinstance(op, ast.Is | ast.IsNot) for op in node.ops)
        and any(isinstance(c, ast.Constant) and c.value is None for c in node.comparators)
        and BACKEND_NAME.search(_name(node.left))
    ) or (
        isinstance(node, ast.Call)
        and _name(node.func) == "isinstance"
        and len(node.args) == 2
        and BACKEND_NAME.search(ast.unparse(node.args[1]))
    ):
        return f"`{ast.unparse(node)}`: a branch on the kind of backend"
    return None


def backend_branches(root: Path) -> list[str]:
    found = []
    for path in _files(root, CORE):
        neutral = _where(root, path).startswith(BACKEND_NEUTRAL)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        lines: set[tuple[int, str]] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and "InProcessBackend" in map(_name, node.bases):
                lines.add((node.lineno, f"class {node.name} subclasses InProcessBackend"))
            elif neutral and (why := _backend_branch(node)):
                lines.add((getattr(node, "lineno", 0), why))
        found += [
            f"{_where(root, path, line)}: {why}; implement or call the Backend protocol"
            for line, why in sorted(lines)
        ]
    return found


def _report(found: list[str]) -> str:
    return f"{len(found)} problem(s):\n" + "\n".join(found)


# --- the tree holds ----------------------------------------------------------------------------


def test_no_module_is_too_long() -> None:
    found = oversized_modules(ROOT)
    assert not found, _report(found)


def test_long_data_modules_exist_and_are_long() -> None:
    for name in LONG_DATA_MODULES:
        path = ROOT / name
        assert path.is_file(), f"{name}: in LONG_DATA_MODULES but missing"
        assert len(path.read_text(encoding="utf-8").splitlines()) > MODULE_LINES, (
            f"{name}: no longer needs its place in LONG_DATA_MODULES"
        )


def test_no_long_branching_function_or_long_class() -> None:
    found = long_functions_and_classes(ROOT)
    assert not found, _report(found)


def test_parts_import_only_parts_below() -> None:
    found = layer_violations(ROOT)
    assert not found, _report(found)


def test_no_import_cycle() -> None:
    found = import_cycles(ROOT)
    assert not found, _report(found)


def test_plugins_import_only_the_public_names_and_the_sdk() -> None:
    found = plugin_import_violations(ROOT)
    assert not found, _report(found)


def test_core_does_not_branch_on_the_backend() -> None:
    found = backend_branches(ROOT)
    assert not found, _report(found)


def test_every_part_is_in_a_layer() -> None:
    parts = {
        path.stem if path.is_file() else path.name
        for path in (ROOT / CORE).iterdir()
        if (path.suffix == ".py" and path.name != "__init__.py") or (path / "__init__.py").is_file()
    }
    missing = sorted(parts - set(LAYER_OF))
    assert not missing, f"parts of {CORE} in no layer (add them to LAYERS): {missing}"


# --- each checker catches what it is for -------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            if parent.parts and parent.parts[0] in {CORE, "plugins"} and parent.name != "plugins":
                (root / parent / "__init__.py").touch()
        path.write_text(text, encoding="utf-8")
    return root


def test_checker_catches_a_long_module(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"wf78_core/data/big.py": "x = 1\n" * 601})
    [found] = oversized_modules(root)
    assert found.startswith("wf78_core/data/big.py: module of 601 lines")
    assert oversized_modules(root, allowed={"wf78_core/data/big.py": "only data"}) == []


def test_checker_catches_a_long_branching_function_and_a_long_class(tmp_path: Path) -> None:
    body = "    x = 1\n" * 80
    branching = f"def long():\n    if x:\n        pass\n{body}"
    straight = f"def plain():\n{body}    return x\n"
    klass = "class Big:\n" + "    a = 1\n" * 400
    root = _tree(tmp_path, {"wf78_core/core/f.py": f"{branching}\n{straight}\n{klass}"})
    found = long_functions_and_classes(root)
    assert found == [
        "wf78_core/core/f.py:1: function long of 83 lines with 1 branches (limit 80): split it",
        f"wf78_core/core/f.py:{83 + 1 + 82 + 1 + 1}: class Big of 401 lines (limit 400): "
        "split it by what changes together",
    ]


def test_checker_catches_upward_sibling_root_and_relative_imports(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "wf78_core/engine.py": "",
            "wf78_core/errors.py": "from wf78_core.ids import new_id\n",  # leaf siblings: fine
            "wf78_core/ids.py": "",
            "wf78_core/core/runs.py": "",
            "wf78_core/data/table.py": (
                "from typing import TYPE_CHECKING\n"
                "from wf78_core.core.runs import Run\n"  # downward: fine
                "if TYPE_CHECKING:\n"
                "    from wf78_core.engine import Engine\n"  # upward, even if only for types
                "from wf78_core.cluster import worker\n"  # independent sibling
                "import wf78_core\n"  # the root
                "from ..core import runs\n"  # relative (and downward)
                "def late():\n"
                "    from wf78_core.http.routes import match\n"  # upward, inside a function
            ),
            "wf78_core/cluster/worker.py": "",
            "wf78_core/http/routes.py": "",
        },
    )
    found = layer_violations(root)
    assert [f.split(": ", 1)[0] for f in found] == [
        "wf78_core/data/table.py:4",
        "wf78_core/data/table.py:5",
        "wf78_core/data/table.py:6",
        "wf78_core/data/table.py:7",
        "wf78_core/data/table.py:9",
    ]
    assert "imports wf78_core.engine, from the engine layer above it" in found[0]
    assert "independent sibling cluster" in found[1]
    assert "imports the root package" in found[2]
    assert "relative import of wf78_core.core.runs" in found[3]
    assert "wf78_core.http.routes" in found[4]


def test_checker_catches_a_part_in_no_layer(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"wf78_core/core/x.py": "from wf78_core.misc import y\n"})
    [found] = layer_violations(root)
    assert found == "wf78_core/core/x.py:1: wf78_core.misc is in no layer; add it to LAYERS"


def test_checker_catches_import_cycles(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "wf78_core/errors.py": "from wf78_core.ids import a\n",
            "wf78_core/ids.py": "\nfrom wf78_core.errors import b\n",
            "wf78_core/core/a.py": "from wf78_core.core.b import x\n",
            "wf78_core/core/b/__init__.py": "",
            "wf78_core/core/b/c.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from wf78_core.core.a import y\n",
        },
    )
    assert layer_violations(root) == []  # leaf siblings may import each other, but not round
    assert import_cycles(root) == [
        "cycle in wf78_core between errors, ids: errors -> ids (wf78_core/errors.py:1); "
        "ids -> errors (wf78_core/ids.py:2)",
        "cycle in wf78_core.core between a, b: a -> b (wf78_core/core/a.py:1); "
        "b -> a (wf78_core/core/b/c.py:3)",
    ]


def test_checker_catches_a_plugin_reaching_inside(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "wf78_core/plugin/spec.py": "",
            "wf78_core/errors.py": "",
            "plugins/wf78_x/__init__.py": (
                "from wf78_core import Operation, errors\n"  # errors is a module: inside
                "from wf78_core.plugin import hookimpl\n"  # the SDK: fine
                "from wf78_core.plugin.spec import hookspec\n"
                "from .util import helper\n"  # its own module: fine
                "import wf78_core.core.runs\n"
            ),
            "plugins/wf78_x/util.py": "import wf78_core\n",
        },
    )
    found = plugin_import_violations(root)
    assert [f.split("; ")[0] for f in found] == [
        "plugins/wf78_x/__init__.py:1: plugin imports wf78_core.errors",
        "plugins/wf78_x/__init__.py:3: plugin imports wf78_core.plugin.spec",
        "plugins/wf78_x/__init__.py:5: plugin imports wf78_core.core.runs",
    ]
    assert found[0].endswith("only wf78_core or wf78_core.plugin, as a third party would")


def test_checker_catches_backend_branches(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "wf78_core/engine.py": (
                "class Engine:\n"
                "    def run(self):\n"
                "        if self.shared:\n"
                "            pass\n"
                "        if self.redis is not None:\n"
                "            pass\n"
                "        if isinstance(self.backend, RedisBackend):\n"
                "            pass\n"
                "        # a shared limit (comments are fine)\n"
                "        if self.limit is None:\n"
                "            pass\n"
            ),
            "wf78_core/cluster/streams.py": (
                "class RedisBackend(InProcessBackend):\n"
                "    shared = True\n"  # the cluster may say what it is
            ),
        },
    )
    found = backend_branches(root)
    assert [f.split(": ", 1)[0] for f in found] == [
        "wf78_core/cluster/streams.py:1",
        "wf78_core/engine.py:3",
        "wf78_core/engine.py:5",
        "wf78_core/engine.py:7",
    ]
    assert "class RedisBackend subclasses InProcessBackend" in found[0]
    assert "`self.shared`: the core does not ask which backend it has" in found[1]
    assert "`self.redis is not None`: a branch on the kind of backend" in found[2]
