"""The one registry mechanism behind model adapters, dataset readers, methods and explainers."""

from __future__ import annotations

import importlib
from typing import Callable, Generic, TypeVar

from rationality.errors import ConfigError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Named classes of one kind, filled by a decorator.

    Args:
        what: what an entry is, for messages (e.g. ``"model adapter"``).
        builtins: module that imports every built-in entry's module, loaded on first lookup.
        name_attribute: class attribute set to the registered name (e.g. ``"kind"``), if any.
    """

    def __init__(self, what: str, builtins: str, name_attribute: str | None = None) -> None:
        self.what = what
        self._builtins = builtins
        self._name_attribute = name_attribute
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: register the class as ``name``."""

        def decorate(cls: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            if self._name_attribute:
                setattr(cls, self._name_attribute, name)
            self._entries[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        """Every registered name, built-ins included."""
        importlib.import_module(self._builtins)
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The class registered as ``name``. Raises ConfigError listing the known names."""
        known = self.names()
        if name not in self._entries:
            raise ConfigError(f"unknown {self.what} {name!r}; known: {', '.join(known)}")
        return self._entries[name]
