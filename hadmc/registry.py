"""One registry pattern for everything chosen by name: losses, advantage estimators, ratio
means, latency and energy probes, searchers.

A `Registry` maps names to objects (functions or classes). Entries are added with the
`register` decorator, or lazily as ``"package.module:attr"`` targets for optional backends
whose imports are heavy or may be missing. An unknown name raises the registry's error type
with the list of valid names, so the config that picked it can be fixed at once::

    SEARCHERS = Registry("searcher", ConfigError)

    @SEARCHERS.register("random")
    class RandomSearcher: ...

    SEARCHERS.get("nsga3")   # ConfigError: unknown searcher 'nsga3'; valid: random, ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError, HadmcError

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one kind by name.

    :param kind: what the entries are, in words (used in error messages: "searcher")
    :param error: the `HadmcError` subclass raised for an unknown name
    """

    def __init__(self, kind: str, error: type[HadmcError] = ConfigError) -> None:
        self.kind = kind
        self.error = error
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name` (and `aliases`)."""

        def add(obj: T) -> T:
            for n in (name, *aliases):
                self.add(n, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        """Register `obj` under `name`; a name registered twice is a programming error."""
        if name in self._entries and self._entries[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._lazy.pop(name, None)
        self._entries[name] = obj

    def add_lazy(self, name: str, target: str) -> None:
        """Register ``"package.module:attr"``, imported on first `get` (optional backends)."""
        if ":" not in target:
            raise ValueError(f"lazy {self.kind} target must be 'module:attr', got {target!r}")
        self._entries.pop(name, None)
        self._lazy[name] = target

    def get(self, name: str) -> T:
        """The entry named `name`; an unknown name raises `error` listing the valid ones."""
        if name in self._entries:
            return self._entries[name]
        if name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            obj = getattr(importlib.import_module(module), attr)
            self._entries[name] = obj
            del self._lazy[name]
            return obj
        raise self.unknown(name)

    def unknown(self, name: object) -> HadmcError:
        """The error for an unknown name (for callers that parse names themselves)."""
        return self.error(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return sorted({*self._entries, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries) + len(self._lazy)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


__all__ = ["Registry"]
