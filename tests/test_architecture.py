"""The house's shape, checked: the package's import graph — module-level AND function-level imports — has no
cycle, every import looks down the layers of docs/architecture.md, the top level stays small, and an import
inside a function only defers a heavy or optional dependency (never hides a circle)."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sslam"
# Layers, bottom up; a module may import its own package and anything in a lower layer. Siblings of one layer
# never import each other (train and evaluation, tables and embeddings...).
LAYERS = [
    {"fingerprints"},
    {"__init__"},                                   # the package root: version, lazy exports, recorder start
    {"runtime"},
    {"audio"},
    {"data"},
    {"model"},
    {"objective"},
    {"train", "evaluation", "tables", "embeddings"},
    {"study"},
    {"cli"},
]
# Third-party packages worth deferring to first use (import time, or optional extras).
HEAVY = {"torch", "torchaudio", "mlflow", "onnx", "onnxruntime", "onnxscript", "huggingface_hub", "pandas",
         "sklearn", "scipy", "matplotlib", "h5py", "soundfile", "safetensors", "numpy", "soxr", "jsonschema",
         "yaml", "tqdm", "mteb"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def resolved(name: str) -> str:
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


@functools.lru_cache(maxsize=None)
def imports(module: str) -> tuple[list[tuple[str, bool, int]], set[str]]:
    """([(imported package module, inside a function, line)], third-party packages imported at module level)."""
    tree = ast.parse(MODULES[module].read_text())
    inside: set[int] = set()
    type_only: set[int] = set()     # `if TYPE_CHECKING:` imports load nothing at run time
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(child) for child in ast.walk(node) if child is not node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(child) for statement in node.body for child in ast.walk(statement))
    own, third = [], set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "sslam":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    own.append((full if full in MODULES else resolved(node.module), id(node) in inside, node.lineno))
            elif id(node) not in inside and node.module != "__future__":
                third.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sslam":
                    own.append((resolved(alias.name), id(node) in inside, node.lineno))
                elif id(node) not in inside:
                    third.add(alias.name.split(".")[0])
    return [(target, inner, line) for target, inner, line in own if target != module], third


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> int:
    return next(index for index, rooms in enumerate(LAYERS) if room(module) in rooms)


def test_the_import_graph_has_no_cycle():
    graph = {module: {target for target, _, _ in imports(module)[0]} for module in MODULES}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)


def test_every_import_looks_down():
    upward = [f"{module}:{line} imports {target}" for module in sorted(MODULES)
              for target, _, line in imports(module)[0]
              if room(target) != room(module) and layer(target) >= layer(module)]
    assert not upward, "imports that do not look down the layers:\n" + "\n".join(upward)


def test_the_top_level_holds_at_most_twelve_rooms():
    rooms = sorted({room(module) for module in MODULES} - {"__init__"})
    assert len(rooms) <= 12, rooms
    assert set(rooms) == set().union(*LAYERS) - {"__init__"}, "a room the layers do not name"


@functools.lru_cache(maxsize=None)
def heavy(module: str) -> frozenset[str]:
    """The heavy third-party packages importing `module` loads: its own module-level imports, those of every
    package module it loads at module level, and of its parent packages (a package may load its children)."""
    loaded: set[str] = set()
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        own, third = imports(current)
        loaded |= third & HEAVY
        parts = current.split(".")
        todo += [target for target, inner, _ in own if not inner]
        todo += [".".join(parts[:n]) for n in range(1, len(parts))]
    return frozenset(loaded)


def test_imports_inside_functions_only_defer_heavy_dependencies():
    """A package import inside a function must load something heavy the importing module does not load already
    (torch at parse time, MLflow, ONNX...); anything else belongs at the top of the module."""
    pointless = [f"{module}:{line} imports {target}" for module in sorted(MODULES)
                 for target, inner, line in imports(module)[0] if inner and not heavy(target) - heavy(module)]
    assert not pointless, "imports inside functions that defer nothing heavy:\n" + "\n".join(pointless)
