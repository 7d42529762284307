"""Imports the ``kubernetes`` package's names when they are first used, not all at once.

The official client's package ``__init__`` files import every API class and all of its 700-odd
models: 30 MiB and a fraction of a second in each worker process, for the few Sluice uses (it sends
and reads JSON itself on the hot paths). Installed before ``kubernetes`` is first imported, this
finder gives those four packages a module whose names resolve on first use (PEP 562
``__getattr__``), read from the same ``from X import Y`` lines their ``__init__`` holds. So a name
the package exports keeps working, including the models the client's deserializer looks up by name;
only the ones nobody uses are never loaded.
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import re
import sys
import types
from collections.abc import Sequence
from pathlib import Path

# The packages whose ``__init__`` imports everything; their submodules are imported as usual.
LAZY_PACKAGES = frozenset(
    {"kubernetes", "kubernetes.client", "kubernetes.client.api", "kubernetes.client.models"}
)
_FROM_IMPORT = re.compile(r"^from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\w+)[ \t]*$", re.MULTILINE)
_CONSTANT = re.compile(r"^(__\w+__)[ \t]*=[ \t]*(['\"])([^'\"\n]*)\2[ \t]*$", re.MULTILINE)


class LazyPackage(types.ModuleType):
    """A package whose exported names are imported on first access."""

    _lazy_names: dict[str, tuple[str, str | None]]
    __all__: list[str]

    def __getattr__(self, name: str) -> object:
        target = self.__dict__.get("_lazy_names", {}).get(name)
        if target is None:
            return self._submodule(name)
        module_name, attribute = target
        module = importlib.import_module(module_name)
        value = module if attribute is None else getattr(module, attribute)
        setattr(self, name, value)
        return value

    def _submodule(self, name: str) -> object:
        """A submodule the eager ``__init__`` imported on the way (``kubernetes.client.rest``); what
        cannot be imported is a missing attribute, so ``hasattr`` and ``getattr(…, default)`` hold."""
        missing = AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        if name.startswith("_"):
            raise missing
        try:
            module = importlib.import_module(f"{self.__name__}.{name}")
        except ImportError as exc:
            raise missing from exc
        setattr(self, name, module)
        return module

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__dict__.get("_lazy_names", {})))


def exported_names(package: str, source: str) -> dict[str, tuple[str, str | None]]:
    """What a package's ``__init__`` imports: name -> (module, attribute; None for a submodule)."""
    names: dict[str, tuple[str, str | None]] = {}
    for written, name in _FROM_IMPORT.findall(source):
        origin = _absolute(package, written)
        names[name] = (f"{package}.{name}", None) if origin == package else (origin, name)
    return names


def reads_every_import(source: str) -> bool:
    """Whether the lines ``exported_names`` and the constants' pattern read are every statement of a
    package's ``__init__``: its docstring, then only ``from X import Y`` (one name, on a line of its
    own) and ``__dunder__ = "text"``. Anything else (``from X import (A, B)``, ``import X``, a function,
    a name bound any other way) the lazy module would leave out, so that package is imported as usual:
    heavier, never missing a name. Parsed once per package and process (about 5 ms for the client's)."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    imports = [node for node in body if isinstance(node, ast.ImportFrom)]
    constants = [node for node in body if _is_text_constant(node)]
    plain = all(len(node.names) == 1 and node.names[0].asname is None for node in imports)
    return (
        len(imports) + len(constants) == len(body)
        and plain
        and len(imports) == len(_FROM_IMPORT.findall(source))
        and len(constants) == len(_CONSTANT.findall(source))
    )


def _is_text_constant(node: ast.stmt) -> bool:
    """``__name__ = "text"``."""
    if not isinstance(node, ast.Assign) or len(node.targets) != 1:
        return False
    target = node.targets[0]
    is_dunder = isinstance(target, ast.Name) and target.id.startswith("__") and target.id.endswith("__")
    return is_dunder and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _absolute(package: str, origin: str) -> str:
    """``from .x``, ``from ..`` or ``from a.b`` as an absolute module name, seen from ``package``."""
    dots = len(origin) - len(origin.lstrip("."))
    if not dots:
        return origin
    base = package.rsplit(".", dots - 1)[0]  # one dot is the package itself, each further one its parent
    return f"{base}.{origin[dots:]}" if origin[dots:] else base


class _LazyLoader(importlib.abc.Loader):
    def __init__(self, spec: importlib.machinery.ModuleSpec, source: str) -> None:
        self.spec = spec
        self.source = source

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return LazyPackage(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        origin = self.spec.origin
        if origin is None or not isinstance(module, LazyPackage):
            raise ImportError(f"{self.spec.name} cannot be imported lazily", name=self.spec.name)
        source = self.source
        module.__file__ = origin
        module.__path__ = list(self.spec.submodule_search_locations or [])
        module._lazy_names = exported_names(module.__name__, source)
        # ``from kubernetes.client.api import *`` (kubernetes.client.apis does it) gets every name.
        module.__all__ = list(module._lazy_names)
        for name, _, value in _CONSTANT.findall(source):
            setattr(module, name, value)


class _LazyFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in LAZY_PACKAGES:
            return None
        real = importlib.machinery.PathFinder.find_spec(fullname, path)
        if real is None or real.origin is None or real.submodule_search_locations is None:
            return None
        source = Path(real.origin).read_text("utf-8")
        if not reads_every_import(source):
            return None
        spec = importlib.machinery.ModuleSpec(
            fullname, _LazyLoader(real, source), origin=real.origin, is_package=True
        )
        spec.submodule_search_locations = real.submodule_search_locations
        return spec


def install() -> None:
    """Makes the next import of ``kubernetes`` lazy. Does nothing once it is imported (or installed)."""
    if "kubernetes" in sys.modules or any(isinstance(finder, _LazyFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _LazyFinder())
