"""A small model registry in the style of the big model zoos: ``create_model(name, **kwargs)``."""

from __future__ import annotations

from typing import Callable

from protloc.errors import ProtlocError

_REGISTRY: dict[str, Callable] = {}


def register_model(name: str) -> Callable:
    def decorator(factory: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    return list(_REGISTRY)


def create_model(name: str, num_classes: int = 13, in_channels: int = 4, **options):
    """Build a network by name with the paper's defaults; ``options`` override them (e.g. dropout)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ProtlocError(f"unknown model {name!r}; choose one of {', '.join(_REGISTRY)}") from None
    return factory(num_classes=num_classes, in_channels=in_channels, **options)


def model_class(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ProtlocError(f"unknown model {name!r}; choose one of {', '.join(_REGISTRY)}") from None
