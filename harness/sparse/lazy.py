"""A module imported the first time one of its attributes is read.

The method classes carry their settings, and the config validates those settings in processes that must
not pay torch's seconds of import (`harness --help`, planning a sweep). So the method modules reach torch,
and the sparse core's modules built on it, through `lazy_module`, and import them for real only when a
method is built or steps.

Not `importlib.util.LazyLoader`: it registers a not-yet-executed module under its real name in
`sys.modules` at once, so `"torch" in sys.modules` (how the start-up tests tell whether torch was
imported) would say yes before anything used it, and the first attribute read would run torch's import
from whatever code happened to touch it. This proxy leaves the import system alone until it is used, then
imports normally, and `sys.modules` tells the truth.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module `name`; reading an attribute imports it (once) and reads it there."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attribute)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r}, {state}>"


def lazy_module(name: str) -> Any:
    """A stand-in for `import name` that imports on first use (typed Any: callers annotate with the real
    module under TYPE_CHECKING)."""
    return LazyModule(name)
