"""One registry mechanism for everything created by name (datasets, models, methods, sources, CAMs, refinement
steps, mask generators): a :class:`Registry` per kind, living next to what it registers, filled by a decorator.

    MODELS: Registry[Factory] = Registry("architecture")

    @MODELS.register("unet")
    def unet(...): ...

    MODELS.get("unet")          # ConfigError "unknown architecture 'x'; known: ..." for an unknown name
    MODELS.names("deeplab*")    # sorted, shell-style pattern (as timm's list_models)
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from weakseg.errors import ConfigError

T = TypeVar("T")
Obj = TypeVar("Obj")


def _origin(obj: Any) -> tuple[str, str] | None:
    """Where an object is defined (module, qualified name), seen through ``functools.partial``; None if unknown
    or not unique (a lambda, a function's local)."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    return module, qualname


def _same(old: Any, new: Any) -> bool:
    """Whether ``new`` is ``old`` again: the same object, or its redefinition by a reloaded module."""
    if old is new:
        return True
    if isinstance(old, functools.partial) and isinstance(new, functools.partial):
        return _same(old.func, new.func) and old.args == new.args and old.keywords == new.keywords
    return _origin(old) is not None and _origin(old) == _origin(new) and type(old) is type(new)


class Registry(Generic[T]):
    """Objects of one ``kind`` by name, in registration order, each with optional metadata and aliases.

    ``normalize`` maps a looked-up name onto a registered one (say ``str.lower``); names are registered as given.
    """

    def __init__(self, kind: str, normalize: Callable[[str], str] | None = None):
        self.kind = kind
        self._normalize = normalize
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: Iterable[str] = (), **meta: Any) -> Callable[[Obj], Obj]:
        """Decorator: register the decorated object under ``name`` (and ``aliases``), with ``meta``; returns the
        object unchanged."""

        def decorate(obj: Obj) -> Obj:
            self.add(name, obj, aliases=aliases, **meta)  # type: ignore[arg-type]
            return obj

        return decorate

    def add(self, name: str, obj: T, *, aliases: Iterable[str] = (), **meta: Any) -> T:
        """Register ``obj`` under ``name``. Registering the same object again (a reloaded module) replaces the
        entry; another object under a taken name or alias is a ValueError."""
        aliases = tuple(aliases)
        for key in (name, *aliases):
            owner = self._aliases.get(key, key)
            if owner in self._entries and not (owner == name and _same(self._entries[name], obj)):
                raise ValueError(
                    f"{self.kind} '{key}' is already registered to {self._describe(self._entries[owner])}; "
                    f"cannot register {self._describe(obj)} under that name"
                )
        self._entries[name] = obj
        self._meta[name] = dict(meta)
        self._aliases.update(dict.fromkeys(aliases, name))
        return obj

    def _describe(self, obj: Any) -> str:
        origin = _origin(obj)
        return f"{origin[0]}.{origin[1]}" if origin else repr(obj)

    def resolve(self, name: str) -> str | None:
        """The registered name that ``name`` (normalized, or an alias) stands for; None if none."""
        key = self._normalize(name) if self._normalize else name
        key = self._aliases.get(key, key)
        return key if key in self._entries else None

    def get(self, name: str) -> T:
        """The object registered under ``name``; ConfigError listing the known names otherwise."""
        key = self.resolve(name)
        if key is None:
            raise ConfigError(f"unknown {self.kind} '{name}'; known: {', '.join(self.names())}")
        return self._entries[key]

    __getitem__ = get

    def meta(self, name: str) -> Mapping[str, Any]:
        """The metadata registered with ``name`` (``{}`` when none); ConfigError for an unknown name."""
        self.get(name)
        return dict(self._meta[self.resolve(name)])  # type: ignore[index]

    def names(self, pattern: str = "*", *, sort: bool = True) -> list[str]:
        """Registered names (aliases left out) matching a shell-style ``pattern``: sorted, or with
        ``sort=False`` in registration order."""
        found = [n for n in self._entries if fnmatch.fnmatchcase(n, pattern)]
        return sorted(found) if sort else found

    def items(self) -> list[tuple[str, T]]:
        """(name, object) pairs in registration order."""
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.resolve(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
