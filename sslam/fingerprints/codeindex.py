"""The package's source as comparable units: what a job's code fingerprint is made of (docs/fingerprints.md).

A module is cut into units, each with a digest of its normalised syntax tree (docstrings, comments,
formatting and blank lines do not count; the dump skips empty fields so that it is stable across
Python versions):

    sslam.x:f            a module-level function            (its whole `def`: decorators, defaults, body)
    sslam.x:C.m          a method of a module-level class   (idem)
    sslam.x:C            a class without its method bodies  (bases, decorators, fields and defaults,
                                                             class attributes, the NAMES of its methods)
    sslam.x:=N           every module-level statement that binds the name N (an assignment, an import,
                                                             or the marker "def N"/"class N")
    sslam.x:<module>     the module-level statements that act when the module is imported (anything
                                                             that is not a definition or a plain binding)

`dependencies(units)` closes a set of executed units over the data they read: the module-level names
their code refers to (constants, imported names, classes with their bases), recursively. Functions are
NOT followed: a function only matters to a job if the job executed it, and then it is itself a unit of
the job's record.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "sslam"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]   # sslam/
DIGEST_LENGTH = 16
MODULE_UNIT = "<module>"
WHOLE_REGISTRY = "*"                # a registry iterated as a whole (its every entry matters)
# Calls that only build a value: a module-level assignment made of these (or of the package's own
# callables, whose execution the recorder sees) binds a name and does nothing else.
PURE_CALLS = {"dict", "list", "tuple", "set", "frozenset", "float", "int", "str", "bool", "bytes", "object",
              "range", "sorted", "len", "field", "dataclasses.field", "TypeVar", "typing.TypeVar", "getLogger",
              "logging.getLogger", "re.compile", "Path", "namedtuple", "collections.namedtuple",
              "math.sqrt", "math.log", "math.exp", "math.ceil", "math.floor", "os.environ.get", "cast"}
_SKIPPED_FIELDS = {"ctx", "type_comment", "kind", "lineno", "col_offset", "end_lineno", "end_col_offset"}


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_LENGTH]


def canonical(node: ast.AST | list | object) -> str:
    """A dump of the tree without positions, contexts or empty fields (stable across Python 3.10-3.13)."""
    if isinstance(node, list):
        return "[" + ",".join(canonical(item) for item in node) + "]"
    if not isinstance(node, ast.AST):
        return repr(node)
    parts = []
    for name, value in ast.iter_fields(node):
        if name in _SKIPPED_FIELDS or value is None or value == []:
            continue
        parts.append(f"{name}={canonical(value)}")
    return f"{type(node).__name__}({','.join(parts)})"


def _without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[1:]
    return body


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            node.body = _without_docstring(node.body) or ([] if isinstance(node, ast.Module) else [ast.Pass()])


def module_name(path: Path) -> str | None:
    """`sslam.a.b` for PACKAGE_ROOT/a/b.py (or .../a/b/__init__.py); None outside the package."""
    try:
        relative = Path(path).resolve().relative_to(PACKAGE_ROOT.parent)
    except ValueError:
        return None
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) if parts and parts[0] == PACKAGE else None


@functools.lru_cache(maxsize=None)
def module_path(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def _names_in(nodes: Iterable[ast.AST]) -> set[str]:
    """Every plain name and module-attribute chain (`a.b.c`) read in the nodes."""
    found: set[str] = set()
    for root in nodes:
        for node in ast.walk(root):
            if isinstance(node, ast.Name):
                found.add(node.id)
            elif isinstance(node, ast.Attribute):
                chain = _attribute_chain(node)
                if chain:
                    found.add(chain)
    return found


def _attribute_chain(node: ast.Attribute) -> str | None:
    parts = [node.attr]
    value = node.value
    while isinstance(value, ast.Attribute):
        parts.append(value.attr)
        value = value.value
    if not isinstance(value, ast.Name):
        return None
    return ".".join([value.id, *reversed(parts)])


def _bound_names(statement: ast.stmt) -> set[str]:
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {statement.name}
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return {(alias.asname or alias.name.split(".")[0]) for alias in statement.names if alias.name != "*"}
    targets: list[ast.AST] = []
    if isinstance(statement, ast.Assign):
        targets = list(statement.targets)
    elif isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
        targets = [statement.target]
    else:  # compound statements bind whatever they assign inside
        return {node.id for node in ast.walk(statement) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)} \
            | {name for child in ast.walk(statement) if isinstance(child, (ast.Import, ast.ImportFrom, ast.FunctionDef,
                                                                             ast.ClassDef)) and child is not statement
               for name in _bound_names(child)}
    return {node.id for target in targets for node in ast.walk(target) if isinstance(node, ast.Name)}


@dataclass
class ModuleIndex:
    """The units of one module's source."""

    name: str
    digests: dict[str, str] = field(default_factory=dict)       # unit -> digest
    reads: dict[str, set[str]] = field(default_factory=dict)    # unit -> names its code reads
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # (first line, last line, unit) of code units
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # name -> (module, attribute or None)
    classes: dict[str, list[str]] = field(default_factory=dict)  # class -> names of its bases
    registries: set[str] = field(default_factory=set)  # names bound to a sslam.fingerprints.recorder.Registry literal

    @classmethod
    def parse(cls, name: str, source: str) -> "ModuleIndex":
        tree = ast.parse(source)
        _strip_docstrings(tree)
        index = cls(name)
        package = name if module_path(name) is not None and module_path(name).name == "__init__.py" \
            else name.rpartition(".")[0]
        binders: dict[str, list[ast.stmt]] = {}
        acting: list[ast.stmt] = []
        for statement in tree.body:
            first = min([statement.lineno] + [d.lineno for d in getattr(statement, "decorator_list", [])])
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                index._add(statement.name, canonical(statement), _names_in([statement]), first, statement.end_lineno)
            elif isinstance(statement, ast.ClassDef):
                index._add_class(statement, first)
            elif isinstance(statement, (ast.Import, ast.ImportFrom)):
                index._add_imports(statement, package)
                if isinstance(statement, ast.ImportFrom) and statement.module == "__future__":
                    acting.append(statement)
            elif not _is_plain_binding(statement):
                acting.append(statement)
            else:
                index._add_registry_entries(statement)
            for bound in _bound_names(statement):
                binders.setdefault(bound, []).append(statement)
        for bound, statements in binders.items():
            text = [f"def {s.name}" if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) else
                    f"class {s.name}" if isinstance(s, ast.ClassDef) else canonical(s) for s in statements]
            read = _names_in(s for s in statements if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
            index.digests[f"={bound}"] = digest("\n".join(text))
            index.reads[f"={bound}"] = read
        index.digests[MODULE_UNIT] = digest("\n".join(canonical(s) for s in acting))
        index.reads[MODULE_UNIT] = _names_in(acting)
        # Statements outside any function or class (module-level expressions, lambdas in constants)
        # map to the module unit; code units are looked up first.
        index.spans.sort()
        return index

    def _add(self, unit: str, text: str, reads: set[str], first: int, last: int) -> None:
        self.digests[unit] = digest(text)
        self.reads[unit] = reads
        self.spans.append((first, last, unit))

    def _add_class(self, node: ast.ClassDef, first: int) -> None:
        skeleton = []
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                method_first = min([item.lineno] + [d.lineno for d in item.decorator_list])
                self._add(f"{node.name}.{item.name}", canonical(item), _names_in([item]), method_first, item.end_lineno)
                skeleton.append(f"def {item.name} {canonical(item.decorator_list)}")
            else:
                skeleton.append(canonical(item))
        header = canonical(ast.ClassDef(name=node.name, bases=node.bases, keywords=node.keywords, body=[],
                                        decorator_list=node.decorator_list))
        body_nodes = [item for item in node.body if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))]
        reads = _names_in(node.bases + node.keywords + node.decorator_list + body_nodes)
        self.digests[node.name] = digest(header + "\n" + "\n".join(skeleton))
        self.reads[node.name] = reads
        self.classes[node.name] = [chain for base in node.bases for chain in _names_in([base])]
        # The class body itself runs at import: it is a definition, mapped here so that it is never
        # mistaken for one of the methods.
        self.spans.append((first, first, f"<class>{node.name}"))

    def _add_imports(self, statement: ast.Import | ast.ImportFrom, package: str) -> None:
        if isinstance(statement, ast.Import):
            for alias in statement.names:
                if alias.asname:
                    self.imports[alias.asname] = (alias.name, None)
                else:  # `import a.b.c` binds `a`; chains like a.b.c.X are resolved from there
                    self.imports[alias.name.split(".")[0]] = (alias.name.split(".")[0], None)
            return
        if statement.level:
            anchor = package.split(".")[: len(package.split(".")) - (statement.level - 1)]
            source = ".".join(anchor + ([statement.module] if statement.module else []))
        else:
            source = statement.module or ""
        for alias in statement.names:
            if alias.name != "*":
                self.imports[alias.asname or alias.name] = (source, alias.name)

    def _add_registry_entries(self, statement: ast.Assign | ast.AnnAssign) -> None:
        """`NAME = Registry("NAME", {"key": value, ...})`: one unit `=NAME[key]` per entry, so that a job
        depends on the entries it looked up (the registry reports them) rather than on the whole table."""
        value = statement.value
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "Registry"
                and len(value.args) == 2 and isinstance(value.args[1], ast.Dict) and len(targets) == 1
                and isinstance(targets[0], ast.Name)):
            return
        entries = value.args[1]
        if not all(isinstance(key, ast.Constant) and isinstance(key.value, str) for key in entries.keys):
            return
        name = targets[0].id
        self.registries.add(name)
        for key, entry in zip(entries.keys, entries.values):
            self.digests[f"={name}[{key.value}]"] = digest(canonical(entry))
            self.reads[f"={name}[{key.value}]"] = _names_in([entry])

    def unit_at(self, line: int, code_name: str) -> str:
        """The unit whose code starts at `line` (a code object's co_firstlineno) or encloses it."""
        best = MODULE_UNIT
        best_size = None
        for first, last, unit in self.spans:
            if first <= line <= last and (best_size is None or last - first < best_size):
                best, best_size = unit, last - first
        return best


def _is_plain_binding(statement: ast.stmt) -> bool:
    """An assignment whose value only builds data (no call that could act on the world)."""
    if not isinstance(statement, (ast.Assign, ast.AnnAssign)):
        return False
    value = statement.value
    if value is None:
        return True
    for node in ast.walk(value):
        if isinstance(node, ast.Call):
            callee = node.func
            name = callee.id if isinstance(callee, ast.Name) else _attribute_chain(callee) if isinstance(callee, ast.Attribute) else None
            if name is None:
                return False
            if name not in PURE_CALLS and not (name[:1].isupper() or name.split(".")[-1][:1].isupper()):
                # Upper-case callees are classes (constructing a value); the package's own are traced.
                return False
    return True


CACHE_VERSION = 1  # bump when units or digests are computed differently: old cache entries are then ignored


def cache_dir() -> Path:
    """Where parsed module indexes are kept between parses (a parse of the paper's DAG reads ~50 modules)."""
    root = os.environ.get("SSLAM_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                         os.path.expanduser("~/.cache"), "sslam")
    return Path(root) / "codeindex"


def cached_parse(name: str, source: str) -> ModuleIndex:
    """ModuleIndex.parse, memoised on disk by the source's content (an unwritable cache only costs time)."""
    key = hashlib.sha256(f"{CACHE_VERSION}\0{name}\0{source}".encode()).hexdigest()
    path = cache_dir() / f"{key}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ModuleIndex(name, data["digests"], {unit: set(names) for unit, names in data["reads"].items()},
                           [tuple(span) for span in data["spans"]],
                           {alias: tuple(target) for alias, target in data["imports"].items()},
                           data["classes"], set(data["registries"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    index = ModuleIndex.parse(name, source)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"digests": index.digests, "reads": {u: sorted(n) for u, n in index.reads.items()},
                                         "spans": index.spans, "imports": index.imports, "classes": index.classes,
                                         "registries": sorted(index.registries)}), encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        pass
    return index


class PackageIndex:
    """Indexes of the package's modules, parsed on first use from the files (or from given sources)."""

    def __init__(self, sources: dict[str, str] | None = None) -> None:
        self._sources = dict(sources or {})
        self._modules: dict[str, ModuleIndex | None] = {}
        self._static: dict[tuple[str, ...], str] = {}

    def module(self, name: str) -> ModuleIndex | None:
        if name not in self._modules:
            source = self._sources.get(name)
            if source is None:
                path = module_path(name)
                source = path.read_text(encoding="utf-8") if path is not None else None
            self._modules[name] = cached_parse(name, source) if source is not None else None
        return self._modules[name]

    def digest_of(self, unit: str) -> str | None:
        """Current digest of `module:unit`, None when the unit no longer exists."""
        module, _, local = unit.partition(":")
        index = self.module(module)
        return None if index is None else index.digests.get(local)

    def dependencies(self, units: Iterable[str], registry_access: dict[str, set[str]] | None = None) -> set[str]:
        """`units` plus the data units their code reads, transitively (see the module docstring).

        `registry_access` (what the recorder saw: registry -> keys looked up, or {WHOLE_REGISTRY}) narrows a
        registry to the entries the job used; without it a registry counts whole."""
        closed: set[str] = set()
        visited: set[str] = set()
        pending = list(units)
        while pending:
            unit = pending.pop()
            if unit in visited:
                continue
            visited.add(unit)
            module, _, local = unit.partition(":")
            index = self.module(module)
            if index is None or local not in index.digests:
                closed.add(unit)  # recorded as missing: the parse that finds it sees a change
                continue
            if registry_access is not None and local.startswith("=") and local[1:] in index.registries:
                accessed = registry_access.get(f"{module}:{local[1:]}", set())
                if WHOLE_REGISTRY not in accessed:
                    pending.extend(f"{unit}[{key}]" for key in accessed)
                    continue
            closed.add(unit)
            if "." in local and not local.startswith("="):  # a method: its class (and bases) come along
                pending.append(f"{module}:{local.split('.')[0]}")
            for name in index.reads.get(local, ()):
                pending.extend(self._resolve(module, name))
        return closed

    def _resolve(self, module: str, chain: str) -> list[str]:
        """The units that a name (or `alias.attr...` chain) read in `module` refers to."""
        index = self.module(module)
        if index is None:
            return []
        head, _, rest = chain.partition(".")
        found: list[str] = []
        if f"={head}" in index.digests:
            found.append(f"{module}:={head}")
        if head in index.classes:
            found.append(f"{module}:{head}")
        if head in index.imports:
            source, attribute = index.imports[head]
            target = f"{source}.{attribute}" if attribute else source
            if module_path(target) is not None:       # a package module: follow the attribute chain into it
                if rest:
                    found.extend(self._resolve_in_module(target, rest))
            elif attribute and module_path(source) is not None:
                found.extend(self._resolve(source, attribute + (f".{rest}" if rest else "")))
        return found

    def _resolve_in_module(self, target: str, chain: str) -> list[str]:
        head, _, rest = chain.partition(".")
        submodule = f"{target}.{head}"
        if module_path(submodule) is not None:
            return self._resolve_in_module(submodule, rest) if rest else []
        return self._resolve(target, chain)

    def modules_imported_by(self, name: str) -> set[str]:
        """`name` and the package modules it imports, transitively (a static over-approximation)."""
        seen: set[str] = set()
        pending = [name]
        while pending:
            current = pending.pop()
            if current in seen or self.module(current) is None:
                continue
            seen.add(current)
            parts = current.split(".")
            pending.extend(".".join(parts[:depth]) for depth in range(1, len(parts)))  # parent packages run first
            for source, attribute in self.module(current).imports.values():
                for candidate in (f"{source}.{attribute}" if attribute else None, source):
                    if candidate and module_path(candidate) is not None:
                        pending.append(candidate)
        return seen

    def static_fingerprint(self, *entry_modules: str) -> str:
        """Digest of every unit of every module the entry modules import: the fingerprint of a job that
        has never run (nothing recorded yet), conservative by construction."""
        if entry_modules not in self._static:
            lines = []
            for name in sorted(set().union(*(self.modules_imported_by(entry) for entry in entry_modules))):
                index = self.module(name)
                lines.extend(f"{name}:{unit} {value}" for unit, value in sorted(index.digests.items()))
            self._static[entry_modules] = digest("\n".join(lines))
        return self._static[entry_modules]
