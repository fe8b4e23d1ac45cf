"""A name -> object registry that fails loudly.

Adapters, scorers and datasets register themselves with `@REGISTRY.register("name")`; a lookup miss lists the names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from minillm_core.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to registered objects; unknown and duplicate names raise `RegistryError`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            for name in names:
                if name in self._items:
                    raise RegistryError(f"{self.kind} {name!r} is already registered")
                self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; supported: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def registered(self) -> list[str]:
        """Names in registration order (the order the registering module declares them in)."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
