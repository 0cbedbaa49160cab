"""The package's source as comparable units: what a job's code fingerprint is made of (docs/fingerprints.md).

A module is cut into units, each with a digest of its normalised syntax tree (docstrings, comments,
formatting and blank lines do not count; the dump skips empty fields so that it is stable across
Python versions):

    sslam.x:f            a module-level function            (its whole `def`: decorators, defaults, body)
    sslam.x:C.m          a method of a module-level class   (idem)
    sslam.x:C            a class without its method bodies  (bases, decorators, fields and defaults,
                                                             class attributes, the NAMES of its methods)
    sslam.x:=N           every module-level statement that binds the name N (an assignment, an import of
                                                             a third-party name, or the marker "def N"/"class N")
    sslam.x:=R[key]      one entry of a `Registry` literal
    sslam.x:<module>     the module-level statements that act when the module is imported (anything
                                                             that is not a definition or a plain binding)

`dependencies(units)` closes a set of executed units over the data they read: the module-level names
their code refers to (constants, imported names, classes with their bases), recursively. Functions are
NOT followed: a function only matters to a job if the job executed it, and then it is itself a unit of
the job's record.

Digest rules (a record names the rules it was made under; `DIGEST_RULES` is the current one):

* 1 (records made before content identity): an import of a package name is a unit `=N` whose digest
  holds the module path, and a package import inside a function is part of the function's digest;
* 2: what a unit *refers to* is not part of its content. Imports of package names (at module level or
  inside functions) and strings naming a package module (the CLI's command table) are references:
  they resolve, through `dependencies`, to the units they name, wherever those live now. So code that
  only moved keeps its digest, and the closure — not the digest — says what it reads. Argument help
  texts (`help=`, `description=`, `epilog=` keywords that call nothing) are not part of a unit, nor is
  what they read: they reach a person, never a result.
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
DIGEST_RULES = 2                    # see the module docstring
MODULE_UNIT = "<module>"
WHOLE_REGISTRY = "*"                # a registry iterated as a whole (its every entry matters)
REFERENCE = "@"                     # a read "@sslam.x:name.attr" names its target absolutely (rules 2)
# Calls that only build a value: a module-level assignment made of these (or of the package's own
# callables, whose execution the recorder sees) binds a name and does nothing else.
PURE_CALLS = {"dict", "list", "tuple", "set", "frozenset", "float", "int", "str", "bool", "bytes", "object",
              "range", "sorted", "len", "field", "dataclasses.field", "TypeVar", "typing.TypeVar", "getLogger",
              "logging.getLogger", "re.compile", "Path", "namedtuple", "collections.namedtuple",
              "math.sqrt", "math.log", "math.exp", "math.ceil", "math.floor", "os.environ.get", "cast"}
HELP_KEYWORDS = {"help", "description", "epilog"}   # rules 2: text for a person (see _is_help)
_SKIPPED_FIELDS = {"ctx", "type_comment", "kind", "lineno", "col_offset", "end_lineno", "end_col_offset"}
# The parse cache is keyed by this file's own source: any change to the rules invalidates it by itself.
_RULES_SOURCE_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_LENGTH]


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


def names_a_module(value: object) -> bool:
    """A string naming a module of the package (`"sslam.train.pretrain"`): a reference, under rules 2."""
    return isinstance(value, str) and value.startswith(PACKAGE + ".") and module_path(value) is not None


@dataclass(frozen=True)
class Rules:
    version: int = DIGEST_RULES


CURRENT = Rules()


class _Dump:
    """The canonical text of a syntax tree: no positions, contexts or empty fields (stable across Python
    3.10-3.13), with the rules' treatment of references and help texts."""

    def __init__(self, rules: Rules, package: str) -> None:
        self.rules, self.package = rules, package

    def __call__(self, node) -> str:
        if isinstance(node, list):
            return "[" + ",".join(self(item) for item in node if not self._dropped(item)) + "]"
        if not isinstance(node, ast.AST):
            return repr(node)
        if self.rules.version >= 2:
            if isinstance(node, ast.Constant) and names_a_module(node.value):
                return "ModuleRef()"
            if _is_help(node):
                return "keyword(help)"
        parts = []
        for name, value in ast.iter_fields(node):
            if name in _SKIPPED_FIELDS or value is None or value == []:
                continue
            parts.append(f"{name}={self(value)}")
        return f"{type(node).__name__}({','.join(parts)})"

    def _dropped(self, item) -> bool:
        """Rules 2: a package import inside a function is a reference (its target is a read), not content."""
        return self.rules.version >= 2 and isinstance(item, (ast.Import, ast.ImportFrom)) \
            and _package_import(item, self.package)



def _is_help(node: ast.AST) -> bool:
    """`help=`, `description=` or `epilog=` whose value calls nothing: text for a person, never for a result."""
    return isinstance(node, ast.keyword) and node.arg in HELP_KEYWORDS and \
        not any(isinstance(child, ast.Call) for child in ast.walk(node.value))


def _walk(node: ast.AST, rules: Rules):
    """ast.walk, without the help texts under rules 2 (what they read does not count either)."""
    pending = [node]
    while pending:
        current = pending.pop()
        if rules.version >= 2 and _is_help(current):
            continue
        yield current
        pending.extend(ast.iter_child_nodes(current))


def _absolute(statement: ast.ImportFrom, package: str) -> str:
    if not statement.level:
        return statement.module or ""
    anchor = package.split(".")[: len(package.split(".")) - (statement.level - 1)]
    return ".".join(anchor + ([statement.module] if statement.module else []))


def _package_import(statement: ast.Import | ast.ImportFrom, package: str) -> bool:
    if isinstance(statement, ast.ImportFrom):
        return _absolute(statement, package).split(".")[0] == PACKAGE
    return all(alias.name.split(".")[0] == PACKAGE for alias in statement.names)


def canonical(node: ast.AST | list | object, rules: Rules = Rules(1), package: str = PACKAGE) -> str:
    """A dump of the tree without positions, contexts or empty fields, under `rules` (default: rules 1)."""
    return _Dump(rules, package)(node)


def _without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[1:]
    return body


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            node.body = _without_docstring(node.body) or ([] if isinstance(node, ast.Module) else [ast.Pass()])


def _names_in(nodes: Iterable[ast.AST], rules: Rules = CURRENT, package: str = PACKAGE) -> set[str]:
    """Every plain name and module-attribute chain (`a.b.c`) read in the nodes. Under rules 2, also the
    references: a name bound by a package import inside a function reads `@module:name...`, and a string
    naming a package module reads `@module`."""
    found: set[str] = set()
    for root in nodes:
        local = _local_imports(root, package) if rules.version >= 2 else {}
        for node in _walk(root, rules):
            chain = node.id if isinstance(node, ast.Name) else \
                _attribute_chain(node) if isinstance(node, ast.Attribute) else None
            if chain:
                head, _, rest = chain.partition(".")
                if head in local:
                    found.add(local[head] + (f".{rest}" if rest else ""))
                else:
                    found.add(chain)
            elif rules.version >= 2 and isinstance(node, ast.Constant) and names_a_module(node.value):
                found.add(f"{REFERENCE}{node.value}:")
        found.update(local.values())
    return found


def _local_imports(root: ast.AST, package: str) -> dict[str, str]:
    """Names bound by package imports inside the functions of `root` -> "@module:attribute" (or "@module:")."""
    local: dict[str, str] = {}
    for function in ast.walk(root):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and _package_import(node, package):
                source = _absolute(node, package)
                for alias in node.names:
                    local[alias.asname or alias.name] = f"{REFERENCE}{source}:{alias.name}"
            elif isinstance(node, ast.Import) and _package_import(node, package):
                for alias in node.names:
                    if alias.asname:
                        local[alias.asname] = f"{REFERENCE}{alias.name}:"
                    else:  # `import sslam.a.b` binds `sslam`; a.b chains are read in full from there
                        local[PACKAGE] = f"{REFERENCE}{PACKAGE}:"
    return local


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
    registries: set[str] = field(default_factory=set)  # names bound to a sslam.fingerprints.Registry literal
    inert: bool = True  # importing it only defines and binds names (no acting statement but `from __future__`)

    @classmethod
    def parse(cls, name: str, source: str, rules: Rules = CURRENT) -> "ModuleIndex":
        tree = ast.parse(source)
        _strip_docstrings(tree)
        index = cls(name)
        package = name if module_path(name) is not None and module_path(name).name == "__init__.py" \
            else name.rpartition(".")[0]
        dump = _Dump(rules, package)
        names_in = functools.partial(_names_in, rules=rules, package=package)
        binders: dict[str, list[ast.stmt]] = {}
        acting: list[ast.stmt] = []
        for statement in tree.body:
            first = min([statement.lineno] + [d.lineno for d in getattr(statement, "decorator_list", [])])
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                index._add(statement.name, dump(statement), names_in([statement]), first, statement.end_lineno)
            elif isinstance(statement, ast.ClassDef):
                index._add_class(statement, first, dump, names_in)
            elif isinstance(statement, (ast.Import, ast.ImportFrom)):
                index._add_imports(statement, package)
                if isinstance(statement, ast.ImportFrom) and statement.module == "__future__":
                    acting.append(statement)
                if rules.version >= 2 and _package_import(statement, package):
                    continue  # a reference: names read through it resolve to its targets (no unit of its own)
            elif not _is_plain_binding(statement):
                acting.append(statement)
            else:
                index._add_registry_entries(statement, dump, names_in)
            for bound in _bound_names(statement):
                binders.setdefault(bound, []).append(statement)
        for bound, statements in binders.items():
            text = [f"def {s.name}" if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) else
                    f"class {s.name}" if isinstance(s, ast.ClassDef) else dump(s) for s in statements]
            read = names_in(s for s in statements if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
            index.digests[f"={bound}"] = digest("\n".join(text))
            index.reads[f"={bound}"] = read
        index.digests[MODULE_UNIT] = digest("\n".join(dump(s) for s in acting))
        index.reads[MODULE_UNIT] = names_in(acting)
        index.inert = all(isinstance(s, ast.ImportFrom) and s.module == "__future__" for s in acting)
        # Statements outside any function or class (module-level expressions, lambdas in constants)
        # map to the module unit; code units are looked up first.
        index.spans.sort()
        return index

    def _add(self, unit: str, text: str, reads: set[str], first: int, last: int) -> None:
        self.digests[unit] = digest(text)
        self.reads[unit] = reads
        self.spans.append((first, last, unit))

    def _add_class(self, node: ast.ClassDef, first: int, dump: _Dump, names_in) -> None:
        skeleton = []
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                method_first = min([item.lineno] + [d.lineno for d in item.decorator_list])
                self._add(f"{node.name}.{item.name}", dump(item), names_in([item]), method_first, item.end_lineno)
                skeleton.append(f"def {item.name} {dump(item.decorator_list)}")
            else:
                skeleton.append(dump(item))
        header = dump(ast.ClassDef(name=node.name, bases=node.bases, keywords=node.keywords, body=[],
                                   decorator_list=node.decorator_list))
        body_nodes = [item for item in node.body if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))]
        reads = names_in(node.bases + node.keywords + node.decorator_list + body_nodes)
        self.digests[node.name] = digest(header + "\n" + "\n".join(skeleton))
        self.reads[node.name] = reads
        self.classes[node.name] = [chain for base in node.bases for chain in _names_in([base], Rules(1))]
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
        source = _absolute(statement, package)
        for alias in statement.names:
            if alias.name != "*":
                self.imports[alias.asname or alias.name] = (source, alias.name)

    def _add_registry_entries(self, statement: ast.Assign | ast.AnnAssign, dump: _Dump, names_in) -> None:
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
            self.digests[f"={name}[{key.value}]"] = digest(dump(entry))
            self.reads[f"={name}[{key.value}]"] = names_in([entry])

    def unit_at(self, line: int, code_name: str) -> str:
        """The unit whose code starts at `line` (a code object's co_firstlineno) or encloses it."""
        best = MODULE_UNIT
        best_size = None
        for first, last, unit in self.spans:
            if first <= line <= last and (best_size is None or last - first < best_size):
                best, best_size = unit, last - first
        return best

    def kind(self, local: str) -> str:
        """code (a function, method or module body), class, or data (a binding or a registry entry)."""
        if local.startswith("="):
            return "data"
        return "class" if local in self.classes else "code"


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


def cache_dir() -> Path:
    """Where parsed module indexes are kept between parses (a parse of the paper's DAG reads ~50 modules)."""
    root = os.environ.get("SSLAM_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                         os.path.expanduser("~/.cache"), "sslam")
    return Path(root) / "codeindex"


def cached_parse(name: str, source: str, rules: Rules = CURRENT) -> ModuleIndex:
    """ModuleIndex.parse, memoised on disk by the source's content, the rules and this file's own source (an
    unwritable cache only costs time)."""
    key = hashlib.sha256(f"{_RULES_SOURCE_DIGEST}\0{rules.version}\0{name}\0{source}".encode()).hexdigest()
    path = cache_dir() / f"{key}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ModuleIndex(name, data["digests"], {unit: set(names) for unit, names in data["reads"].items()},
                           [tuple(span) for span in data["spans"]],
                           {alias: tuple(target) for alias, target in data["imports"].items()},
                           data["classes"], set(data["registries"]), data["inert"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    index = ModuleIndex.parse(name, source, rules)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"digests": index.digests, "reads": {u: sorted(n) for u, n in index.reads.items()},
                                         "spans": index.spans, "imports": index.imports, "classes": index.classes,
                                         "registries": sorted(index.registries), "inert": index.inert}),
                                  encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        pass
    return index


def package_modules() -> list[str]:
    """Every module of the package, by name."""
    names = (module_name(path) for path in PACKAGE_ROOT.rglob("*.py"))
    return sorted(name for name in names if name)


class PackageIndex:
    """Indexes of the package's modules under one set of rules, parsed on first use from the files (or
    from given sources)."""

    def __init__(self, sources: dict[str, str] | None = None, rules: Rules = CURRENT) -> None:
        self._sources = dict(sources or {})
        self.rules = rules
        self._modules: dict[str, ModuleIndex | None] = {}
        self._static: dict[tuple[str, ...], str] = {}
        self._by_content: dict[tuple[str, str], list[str]] | None = None

    def module(self, name: str) -> ModuleIndex | None:
        if name not in self._modules:
            source = self._sources.get(name)
            if source is None:
                path = module_path(name)
                source = path.read_text(encoding="utf-8") if path is not None else None
            self._modules[name] = cached_parse(name, source, self.rules) if source is not None else None
        return self._modules[name]

    def digest_of(self, unit: str) -> str | None:
        """Current digest of `module:unit`, None when the unit no longer exists."""
        module, _, local = unit.partition(":")
        index = self.module(module)
        return None if index is None else index.digests.get(local)

    def units_with(self, local: str, value: str) -> list[str]:
        """Every unit of the package named `local` in its module with this digest: where code that moved is now."""
        if self._by_content is None:
            self._by_content = {}
            for name in sorted(set(package_modules()) | set(self._sources)):
                index = self.module(name)
                for unit, unit_digest in (index.digests.items() if index else ()):
                    self._by_content.setdefault((unit, unit_digest), []).append(f"{name}:{unit}")
        return self._by_content.get((local, value), [])

    def dependencies(self, units: Iterable[str], registry_access: dict[str, set[str]] | None = None) -> set[str]:
        """`units` plus the data units their code reads, transitively (see the module docstring)."""
        return set(self.graph(units, registry_access))

    def graph(self, units: Iterable[str], registry_access: dict[str, set[str]] | None = None) -> dict[str, list[str]]:
        """The closure of `units` with its edges: unit -> the units its code reads (`targets`).

        `registry_access` (what the recorder saw: registry -> keys looked up, or {WHOLE_REGISTRY}) narrows a
        registry to the entries the job used; without it a registry counts whole. A unit that does not exist
        is kept (with no edges): the parse that looks for it sees a change."""
        edges: dict[str, list[str]] = {}
        pending = [narrowed for unit in units for narrowed in self.narrowed(unit, registry_access)]
        while pending:
            unit = pending.pop()
            if unit not in edges:
                edges[unit] = self.targets(unit, registry_access)
                pending.extend(edges[unit])
        return edges

    def targets(self, unit: str, registry_access: dict[str, set[str]] | None = None) -> list[str]:
        """The units `unit`'s code reads, resolved through imports, and for a method its class (with its bases)."""
        module, _, local = unit.partition(":")
        index = self.module(module)
        if index is None or local not in index.digests:
            return []
        found = [f"{module}:{local.split('.')[0]}"] if "." in local and not local.startswith("=") else []
        for name in index.reads.get(local, ()):
            for target in self.resolve(module, name):
                found.extend(self.narrowed(target, registry_access))
        return sorted(set(found) - {unit})

    def narrowed(self, unit: str, registry_access: dict[str, set[str]] | None) -> list[str]:
        """A registry unit `=R` stands for the entries `=R[key]` that were looked up (all of it if iterated)."""
        module, _, local = unit.partition(":")
        index = self.module(module)
        if registry_access is not None and index is not None and local.startswith("=") and local[1:] in index.registries:
            accessed = registry_access.get(f"{module}:{local[1:]}", set())
            if WHOLE_REGISTRY not in accessed:
                return [f"{unit}[{key}]" for key in sorted(accessed)]
        return [unit]

    def resolve(self, module: str, chain: str) -> list[str]:
        """The units that a name (or `alias.attr...` chain, or an absolute "@module:attr..." reference) read
        in `module` refers to."""
        if chain.startswith(REFERENCE):
            target, _, rest = chain[1:].partition(":")
            if not rest:
                return [f"{target}:{MODULE_UNIT}"] if self.module(target) is not None else []
            return self._resolve_in_module(target, rest) if self.module(target) is not None else []
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
                found.extend(self.resolve(source, attribute + (f".{rest}" if rest else "")))
        return found

    def _resolve_in_module(self, target: str, chain: str) -> list[str]:
        head, _, rest = chain.partition(".")
        submodule = f"{target}.{head}"
        if module_path(submodule) is not None:
            return self._resolve_in_module(submodule, rest) if rest else []
        return self.resolve(target, chain)

    def imported_at_load(self, name: str) -> set[str]:
        """The package modules that importing `name` imports too: its packages and its module-level imports."""
        index = self.module(name)
        if index is None:
            return set()
        parts = name.split(".")
        found = {".".join(parts[:depth]) for depth in range(1, len(parts))}
        for source, attribute in index.imports.values():
            for candidate in (f"{source}.{attribute}" if attribute else None, source):
                if candidate and module_path(candidate) is not None:
                    found.add(candidate)
                    break
        return found - {name}

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
