"""The one registry mechanism behind model adapters, dataset readers, methods and explainers."""

from __future__ import annotations

import importlib
from typing import Callable, Generic, TypeVar

from rationality.errors import ConfigError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Named classes of one kind, filled by a decorator.

    An entry whose module imports large libraries can be *declared* (name -> module) instead of
    imported by the builtins module: it is then listed and checked without importing anything (the
    workflow checks a config's names at every start), and its module is imported when the entry is
    first looked up, which registers it.

    Args:
        what: what an entry is, for messages (e.g. ``"model adapter"``).
        builtins: module that imports (or declares) every built-in entry, loaded on first lookup.
        name_attribute: class attribute set to the registered name (e.g. ``"kind"``), if any.
    """

    def __init__(self, what: str, builtins: str, name_attribute: str | None = None) -> None:
        self.what = what
        self._builtins = builtins
        self._name_attribute = name_attribute
        self._entries: dict[str, T] = {}
        self._declared: dict[str, str] = {}

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

    def declare(self, name: str, module: str) -> None:
        """Declare that importing ``module`` registers ``name`` (see the class docstring)."""
        self._declared[name] = module

    def names(self) -> list[str]:
        """Every registered or declared name, built-ins included."""
        importlib.import_module(self._builtins)
        return sorted({*self._entries, *self._declared})

    def check(self, name: str, key: str = "") -> str:
        """``name`` if it is registered or declared; ConfigError (about ``key``) listing the known names otherwise."""
        known = self.names()
        if name not in known:
            raise ConfigError(f"unknown {self.what} {name!r}; known: {', '.join(known)}", key)
        return name

    def get(self, name: str) -> T:
        """The class registered as ``name``, its declared module imported if need be.

        Raises:
            ConfigError: for an unknown name, listing the known ones.
        """
        if self.check(name) not in self._entries:
            importlib.import_module(self._declared[name])
            if name not in self._entries:
                raise ValueError(f"{self.what} {name!r} is declared in {self._declared[name]}, which does not "
                                 "register it")
        return self._entries[name]
