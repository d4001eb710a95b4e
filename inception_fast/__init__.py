"""Fused inference for the Inception family: each block's parallel branch convolutions and
their concatenation run as one kernel launch per dependency stage (Triton or a CUDA
extension), from plans derived from the model itself."""

# The public names are imported on first use (PEP 562), not here: importing a submodule must
# not import torch and the whole package, since compile worker processes import the Triton
# kernel modules only (`kernels/triton/compile_worker.py`) and would otherwise start seconds
# later.

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

__version__ = "0.2.0"

# Each public name and the submodule that defines it.
_PUBLIC = {
    "DEFAULT_CFG": "architectures.inception_v4",
    "FusedBlock": "modules",
    "FusedNetwork": "modules",
    "InceptionV4": "architectures.inception_v4",
    "UnsupportedModel": "compiler",
    "fuse_block": "modules",
    "inception_v4": "architectures.inception_v4",
    "optimize": "optimize",
}

__all__ = [
    "DEFAULT_CFG",
    "FusedBlock",
    "FusedNetwork",
    "InceptionV4",
    "UnsupportedModel",
    "fuse_block",
    "inception_v4",
    "optimize",
]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value  # looked up once
        return value
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)  # a submodule, as before it was lazy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """This package, whose attribute `optimize` stays the function: once a submodule loads, the
    import system sets the package's attribute of that name to it, and the submodule
    `optimize` may load (imported by another submodule) before the function is asked for."""

    def __setattr__(self, name: str, value) -> None:
        if name == "optimize" and isinstance(value, types.ModuleType):
            value = value.optimize
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
