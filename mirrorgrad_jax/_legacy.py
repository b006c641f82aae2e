"""Module paths of earlier releases, kept importable after the library moved into subpackages.

``import mirrorgrad_jax.trainer`` (or ``from mirrorgrad_jax.trainer import train``) still
works: the old path is an alias module whose names are looked up, on first use, in the
modules that hold them now. Importing an old path warns once with a
``DeprecationWarning`` that names the new place. Nothing is imported before it is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

__all__ = ["MOVED", "install"]

#: Old module path -> the modules its public names live in now (searched in order).
MOVED: dict[str, tuple[str, ...]] = {
    "mirrorgrad_jax.transform": ("mirrorgrad_jax.optim",),
    "mirrorgrad_jax.steps": ("mirrorgrad_jax.optim",),
    "mirrorgrad_jax.partition": ("mirrorgrad_jax.optim",),
    "mirrorgrad_jax.nnx_train": ("mirrorgrad_jax.optim",),
    "mirrorgrad_jax.sharding": ("mirrorgrad_jax.devices", "mirrorgrad_jax.evaluation"),
    "mirrorgrad_jax.trainer": ("mirrorgrad_jax.train",),
    "mirrorgrad_jax.checkpoint": ("mirrorgrad_jax.train.checkpoint",),
    "mirrorgrad_jax.trained": ("mirrorgrad_jax.train.trained",),
    "mirrorgrad_jax.grid": ("mirrorgrad_jax.train.grid",),
    "mirrorgrad_jax.demo": ("mirrorgrad_jax.cli.demo",),
    "mirrorgrad_jax.perturb": ("mirrorgrad_jax.analysis.perturb",),
    "mirrorgrad_jax.flatness": ("mirrorgrad_jax.analysis.flatness",),
    "mirrorgrad_jax.robustness": ("mirrorgrad_jax.analysis.robustness",),
    "mirrorgrad_jax.comparison": ("mirrorgrad_jax.analysis.comparison",),
    "mirrorgrad_jax.plots": ("mirrorgrad_jax.analysis.plots",),
    "mirrorgrad_jax.patience": ("mirrorgrad_jax.analysis.patience",),
    "mirrorgrad_jax.models.base": (
        "mirrorgrad_jax.models.interface",
        "mirrorgrad_jax.models.registry",
        "mirrorgrad_jax.models.kernels",
        "mirrorgrad_jax.models.losses",
        "mirrorgrad_jax.models.initializers",
        "mirrorgrad_jax.models.inputs",
    ),
}


class _MovedModule(types.ModuleType):
    """An old module path: attribute lookups go to the modules that hold the names now."""

    def __init__(self, name: str, targets: tuple[str, ...]) -> None:
        super().__init__(name, f"Moved: see {', '.join(targets)}.")
        self.__targets = targets

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self.__targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r} (its names moved to {', '.join(self.__targets)})")

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for target in self.__targets:
            module = importlib.import_module(target)
            names.update(getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")]))
        return sorted(names)


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of :data:`MOVED` (after every ordinary finder has failed)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _MovedModule(spec.name, MOVED[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(
            f"{module.__name__} has moved to {' / '.join(MOVED[module.__name__])}; import from there",
            DeprecationWarning,
            stacklevel=2,
        )


def install() -> None:
    """Puts the finder of old paths at the end of ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
