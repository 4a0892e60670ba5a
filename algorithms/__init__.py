"""Algorithm registry. An algorithm is one file with `@register("name")` on a subclass of
`algorithms.base.Algorithm`; naming it in a YAML (`algorithm: name`) is all the harness needs."""
from __future__ import annotations

import importlib
import pkgutil

_REGISTRY: dict[str, type] = {}
_loaded = False


def register(name: str):
    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"algorithm {name!r} registered twice ({_REGISTRY[name].__module__}, {cls.__module__})")
        _REGISTRY[name] = cls
        cls.name = name
        return cls
    return deco


def _load_all() -> None:
    """Import every module of this package once, so that each file's @register runs."""
    global _loaded
    if not _loaded:
        _loaded = True
        for m in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{m.name}")


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> type:
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown algorithm {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
