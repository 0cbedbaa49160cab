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
"""
from __future__ import annotations

import _compat_pickle
import pickle
import types
from pathlib import Path
from typing import Any

import torch

from sslam.runtime.errors import SslamError


class RefusedPickleError(SslamError, ValueError):
    """A pickled file would run code while loading (it calls or instantiates an object outside the allow-list)."""


class _Refused(Exception):
    """Raised inside the unpickler; `restricted_torch_load` turns it into a RefusedPickleError naming the file."""

    def __init__(self, qualified: str, how: str) -> None:
        super().__init__(qualified, how)
        self.qualified, self.how = qualified, how


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


_GUARDED_GLOBALS = {
    ("builtins", "type"): _none_type, ("operator", "getitem"): _getitem, ("_operator", "getitem"): _getitem,
    ("builtins", "getattr"): _getattr, ("copyreg", "_reconstructor"): _reconstructor,
    ("collections", "defaultdict"): _plain_dict,
}


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Fresh stub classes per file: a file's BUILD opcodes may set attributes on them.
        self._stubs: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch.save's default) spell Python 2 names (`__builtin__`); the stock
        # find_class maps them, an override sees them raw.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _GUARDED_GLOBALS:
            return _GUARDED_GLOBALS[(module, name)]
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in _DATA_GLOBALS or is_dtype:
            return super().find_class(module, name)
        qualified = f"{module}.{name}"
        if qualified not in self._stubs:
            base = ConfigStub if _is_config_name(qualified) else ForeignStub
            self._stubs[qualified] = type(name, (base,), {"__module__": module, "__qualname__": name})
        return self._stubs[qualified]


# torch.load wants a module-like object with `Unpickler` and `load`.
_restricted_pickle = types.ModuleType("sslam_restricted_pickle")
_restricted_pickle.Unpickler = RestrictedUnpickler
_restricted_pickle.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()


def restricted_torch_load(path: str | Path) -> Any:
    """`torch.load` of `path` on the CPU through `RestrictedUnpickler`; a file that would run code raises
    RefusedPickleError (one line: the file and the object it would call). Other failures propagate as
    torch raises them (the callers word them)."""
    try:
        # weights_only=False only because torch refuses a custom pickle module otherwise; the restriction
        # is our unpickler's.
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
    except _Refused as refused:
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
