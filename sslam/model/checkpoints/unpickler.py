"""Reading `.pt` files without running code from them: the one `torch.load` of the package's checkpoint readers.

A pickle is a small program: GLOBAL names a Python object, REDUCE calls it, NEWOBJ instantiates a class,
BUILD hands it its state. A hostile file names `os.system` (or `builtins.eval`, `subprocess.Popen`, a class
whose construction does something) and has it called while the file loads. This unpickler resolves every
name the file uses into one of three kinds:

* data builders (`_DATA_GLOBALS`): the real torch/numpy/collections callables that rebuild tensors, arrays
  and containers; they build data and nothing else;
* inert configuration (`_CONFIG_NAMESPACES`: omegaconf, argparse.Namespace, typing, enum, pathlib, the
  fairseq dataclass configs): fairseq files pickle their settings as such objects. They become stubs that
  record their arguments and state (`ConfigStub.args`, `.state`), so neither fairseq nor omegaconf is needed;
* anything else: a stub too, which may be *referenced* (omegaconf stores classes as type annotations) but
  refuses to be *called or instantiated*. Loading such a file raises `RefusedPickleError`, one line naming
  the file and the object, and nothing of the file's code has run: the real object was never imported.

A few stdlib helpers that pickles of data need (`type(None)`, `operator.getitem` on typing aliases,
`copyreg._reconstructor`, `collections.defaultdict`) are replaced by guarded versions that accept only
those uses.

Sizes a file states are bounded too (sslam.runtime.limits), because a 79-byte pickle calling
`bytearray(2**31)` allocates 2 GB before anything could look at it: `bytes(n)` / `bytearray(n)` up to
MAX_PICKLED_BYTES, numpy's `_reconstruct` up to MAX_PICKLED_ARRAY_ELEMENTS, a tensor storage up to what the
file can hold (MAX_CHECKPOINT_EXPANSION × its size, checked before torch allocates it), and a zip archive's
entries up to the same total before torch opens it.
"""
from __future__ import annotations

import _compat_pickle
import math
import operator
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from sslam.runtime.errors import SslamError
from sslam.runtime.limits import MAX_CHECKPOINT_EXPANSION, MAX_PICKLED_ARRAY_ELEMENTS, MAX_PICKLED_BYTES


class RefusedPickleError(SslamError, ValueError):
    """A pickled file would run code while loading (it calls or instantiates an object outside the allow-list)."""


class _Refused(Exception):
    """Raised inside the unpickler; `restricted_torch_load` turns it into a RefusedPickleError naming the file.
    `oversize` describes a refused allocation (a call that is allowed, but not at that size)."""

    def __init__(self, qualified: str, how: str, oversize: str = "") -> None:
        super().__init__(qualified, how, oversize)
        self.qualified, self.how, self.oversize = qualified, how, oversize


class ConfigStub:
    """Stand-in for an inert configuration class (omegaconf node, argparse.Namespace, enum...): it accepts
    whatever the pickle constructs it with and keeps it as data (`args`, `state`)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "ConfigStub":
        # NEWOBJ calls only __new__, REDUCE calls __new__ and __init__: record the arguments here.
        stub = object.__new__(cls)
        stub.args, stub.state = args, None
        return stub

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


class ForeignStub:
    """Stand-in for any other name: a file may mention it as a value, never call or instantiate it."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "ForeignStub":
        raise _Refused(f"{cls.__module__}.{cls.__qualname__}", "call")


# Real callables that only rebuild tensors, arrays and containers.
_DATA_GLOBALS = {
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"), ("torch.nn.parameter", "Parameter"),
    ("torch", "Tensor"), ("torch", "Size"), ("torch", "device"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("builtins", "bytearray"), ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"),
    ("builtins", "int"), ("builtins", "float"), ("builtins", "str"), ("builtins", "bool"), ("builtins", "bytes"),
    ("builtins", "object"), ("_codecs", "encode"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}
# Modules (or module.name prefixes) whose objects fairseq-style files pickle as plain configuration.
_CONFIG_NAMESPACES = ("omegaconf", "typing", "enum", "pathlib", "datetime", "argparse.Namespace",
                      "fairseq.dataclass", "examples.data2vec.data.modality")


def _is_config_name(qualified: str) -> bool:
    return any(qualified == space or qualified.startswith(space + ".") for space in _CONFIG_NAMESPACES)


def _is_config(value: Any) -> bool:
    return isinstance(value, ConfigStub) or isinstance(value, type) and issubclass(value, ConfigStub)


def _none_type(value: Any) -> type:
    """`type(None)` is how pickle spells NoneType (e.g. inside Optional[int] annotations); nothing else."""
    if value is not None:
        raise _Refused("builtins.type", "call")
    return type(None)


class _TypingAlias(ConfigStub):
    """What `Optional[int]`-style annotations become (their args: the typing stub and its parameters)."""


class _EnumMember(ConfigStub):
    """What `getattr(EnumClass, "member")` becomes (args: the enum stub and the member's name)."""


def _getitem(container: Any, key: Any) -> Any:
    """`Optional[int]`-style annotations pickle as operator.getitem(typing.Union, ...): keep them as stubs."""
    if _is_config(container):
        return _TypingAlias(container, key)
    if isinstance(container, (dict, list, tuple)):
        return container[key]
    raise _Refused("operator.getitem", "call")


def _getattr(owner: Any, name: str, *default: Any) -> Any:
    """Enums of newer Pythons pickle as getattr(EnumClass, member): allowed on configuration stubs only."""
    if _is_config(owner) and isinstance(name, str):
        return _EnumMember(owner, name)
    raise _Refused("builtins.getattr", "call")


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """copyreg._reconstructor (pickle protocols 0 and 1): instantiate configuration stubs only."""
    if isinstance(cls, type) and issubclass(cls, ConfigStub):
        return cls.__new__(cls)
    raise _Refused(f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}", "call")


def _plain_dict(default_factory: Any = None, *args: Any) -> dict:
    """A defaultdict without its factory (which would be called later, on a missing key)."""
    return dict(*args)


def _bounded_bytes(builder: type) -> Any:
    """`bytes` / `bytearray` whose size argument (`bytes(n)` allocates n zero bytes) is at most MAX_PICKLED_BYTES;
    built from data (a string, a list of ints) they are as large as the file already is."""
    def build(*args: Any, **kwargs: Any) -> Any:
        source = args[0] if args else kwargs.get("source")
        if not isinstance(source, (str, bytes, bytearray, memoryview, list, tuple)) and hasattr(source, "__index__"):
            size = operator.index(source)
            if size > MAX_PICKLED_BYTES:
                raise _Refused(f"builtins.{builder.__name__}", "call",
                               f"{builder.__name__}({size}) would allocate {size / 2**20:,.0f} MiB (a pickle may build "
                               f"at most {MAX_PICKLED_BYTES / 2**20:.0f} MiB of bytes at once)")
        return builder(*args, **kwargs)

    build.__name__ = builder.__name__
    return build


def _bounded_reconstruct(real: Any) -> Any:
    """numpy's `_reconstruct(cls, shape, dtype)` allocates `shape` before the array's data arrives; pickles of
    arrays use shape (0,)."""
    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
        try:
            elements = math.prod(operator.index(side) for side in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        except TypeError:
            elements = 0   # numpy itself refuses a shape that is not integers
        if elements > MAX_PICKLED_ARRAY_ELEMENTS:
            raise _Refused("numpy._reconstruct", "call", f"an array of shape {tuple(shape)} would be allocated before "
                           f"its data (at most {MAX_PICKLED_ARRAY_ELEMENTS} elements)")
        return real(subtype, shape, dtype)

    return reconstruct


_GUARDED_GLOBALS = {
    ("builtins", "type"): _none_type, ("operator", "getitem"): _getitem, ("_operator", "getitem"): _getitem,
    ("builtins", "getattr"): _getattr, ("copyreg", "_reconstructor"): _reconstructor,
    ("collections", "defaultdict"): _plain_dict,
}


class RestrictedUnpickler(pickle.Unpickler):
    # Bytes one tensor storage of the file may declare; restricted_torch_load sets it from the file's size.
    max_storage_bytes: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Fresh stub classes per file: a file's BUILD opcodes may set attributes on them.
        self._stubs: dict[str, type] = {}

    # torch.load assigns its own persistent_load, which allocates each storage at the size the pickle states
    # (torch.UntypedStorage(numel * element size)) before reading any data: wrap it with a size check.
    @property
    def persistent_load(self) -> Any:
        return pickle.Unpickler.persistent_load.__get__(self)

    @persistent_load.setter
    def persistent_load(self, load: Any) -> None:
        limit = self.max_storage_bytes

        def checked(saved_id: Any) -> Any:
            if limit is not None and isinstance(saved_id, tuple) and len(saved_id) >= 5:
                typename = saved_id[0].decode("ascii", "replace") if isinstance(saved_id[0], bytes) else saved_id[0]
                storage_type, numel = saved_id[1], saved_id[4]     # (typename, type, key, location, numel, ...)
                dtype = getattr(storage_type, "dtype", None)
                if typename == "storage" and isinstance(numel, int) and isinstance(dtype, torch.dtype):
                    nbytes = numel * torch._utils._element_size(dtype)
                    if nbytes > limit:
                        raise _Refused("torch storage", "load",
                                       f"a tensor storage of {nbytes:,} bytes is declared, more than the "
                                       f"{limit:,} bytes the file can hold")
            return load(saved_id)

        pickle.Unpickler.persistent_load.__set__(self, checked)

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch.save's default) spell Python 2 names (`__builtin__`); the stock
        # find_class maps them, an override sees them raw.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _GUARDED_GLOBALS:
            return _GUARDED_GLOBALS[(module, name)]
        if (module, name) in (("builtins", "bytes"), ("builtins", "bytearray")):
            return _bounded_bytes(super().find_class(module, name))
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _bounded_reconstruct(super().find_class(module, name))
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in _DATA_GLOBALS or is_dtype:
            return super().find_class(module, name)
        qualified = f"{module}.{name}"
        if qualified not in self._stubs:
            base = ConfigStub if _is_config_name(qualified) else ForeignStub
            self._stubs[qualified] = type(name, (base,), {"__module__": module, "__qualname__": name})
        return self._stubs[qualified]


def _pickle_module(max_storage_bytes: int) -> types.ModuleType:
    """What torch.load wants as its pickle module (`Unpickler` and `load`), bounded for one file."""
    unpickler = type("RestrictedUnpickler", (RestrictedUnpickler,), {"max_storage_bytes": max_storage_bytes})
    module = types.ModuleType("sslam_restricted_pickle")
    module.Unpickler = unpickler
    module.load = lambda file, **kwargs: unpickler(file, **kwargs).load()
    return module


def _check_archive(path: Path, limit: int) -> None:
    """torch.save writes a zip of uncompressed entries, but torch.load also inflates deflated ones: a 2-MB
    archive of zeros can expand to gigabytes. Refuse an archive whose entries state more than `limit` bytes."""
    if not zipfile.is_zipfile(path):
        return                                  # the legacy format: its storages are bounded while unpickling
    try:
        with zipfile.ZipFile(path) as archive:
            stated = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return                                  # torch reports the damaged archive in its own words
    if stated > limit:
        raise RefusedPickleError(f"{path}: refused: its zip entries expand to {stated:,} bytes, more than "
                                 f"{MAX_CHECKPOINT_EXPANSION} × the file's size (torch.save does not compress), "
                                 "so nothing was loaded")


def restricted_torch_load(path: str | Path) -> Any:
    """`torch.load` of `path` on the CPU through `RestrictedUnpickler`; a file that would run code, or allocate
    more than it can hold (see the module docstring), raises RefusedPickleError (one line: the file and the
    object or size). Other failures propagate as torch raises them (the callers word them)."""
    path = Path(path)
    limit = MAX_CHECKPOINT_EXPANSION * path.stat().st_size
    _check_archive(path, limit)
    try:
        # weights_only=False only because torch refuses a custom pickle module otherwise; the restriction
        # is our unpickler's.
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module(limit))
    except _Refused as refused:
        if refused.oversize:
            raise RefusedPickleError(f"{path}: refused: {refused.oversize}, so nothing was loaded") from None
        raise RefusedPickleError(
            f"{path}: refused: loading it would run {refused.qualified} (a code-running object in the pickle; "
            "only tensors, arrays, containers and inert config objects are accepted), so nothing was loaded"
        ) from None


def find_setting(root: Any, name: str) -> Any:
    """Best-effort, breadth-first (shallowest wins) search for setting `name` inside stubbed
    omegaconf/argparse objects; omegaconf keeps values in `_content` dicts of nodes holding `_val`."""
    queue, seen = [root], set()
    while queue:
        node = queue.pop(0)
        if id(node) in seen:  # omegaconf nodes point back to their parents
            continue
        seen.add(id(node))
        if isinstance(node, ConfigStub):
            queue.extend([node.state, node.args])
        elif isinstance(node, dict):
            if name in node:
                value = node[name]
                if isinstance(value, ConfigStub) and isinstance(value.state, dict):
                    value = value.state.get("_val")
                return value
            queue.extend(node.values())
        elif isinstance(node, (list, tuple)):
            queue.extend(node)
    return None


__all__ = ["ConfigStub", "RefusedPickleError", "RestrictedUnpickler", "find_setting", "restricted_torch_load"]
