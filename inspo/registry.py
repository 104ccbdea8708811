"""One registry shape for every extension point: losses, conditionings, layouts (and reference modes).

A :class:`Registry` maps short names (``dpo``, ``inspo``, ``packed``) to classes and turns a config value into an
instance: an instance is kept, a short name is looked up, and ``{"class_path": ..., "init_args": {...}}`` (what
LightningCLI builds from YAML and a checkpoint's saved hyperparameters hold) is imported. Every failure is one
:class:`~inspo.errors.ConfigError` line naming the kind and the value, e.g.
``unknown layout 'pakced'; choose one of: packed, separate``. Adding a component is one decorator::

    @LAYOUTS.register("concat")
    class ConcatLayout(Layout): ...
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from inspo.errors import ConfigError

T = TypeVar("T")
C = TypeVar("C", bound=type)


class Registry(dict, Generic[T]):
    """Short name -> class of one kind of component (a ``dict``: ``name in REGISTRY``, ``sorted(REGISTRY)``).

    Args:
        kind: what the components are, as said in errors (``loss``, ``conditioning``, ``layout``).
        base: the class every component derives from; a ``class_path`` to anything else is refused.
        special: names the caller resolves before the registry (``auto``), listed first in errors.
    """

    def __init__(self, kind: str, base: type[T], special: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.kind = kind
        self.base = base
        self.special = special
        self.aliases: dict[str, str] = {}
        """Other name -> registered name (``sigmoid`` -> ``dpo``, TRL's name); kept out of the dict, so iterating a
        registry (the contract tests, the list in errors) sees each component once, under its own name."""

    def register(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[C], C]:
        """Class decorator adding a component under ``name`` (and ``aliases``, other names that resolve to it);
        registering the same class again (also a re-import of its module, as after ``importlib.reload``) replaces
        it, another class under a taken name is an error."""

        def decorator(cls: C) -> C:
            for taken in (name, *aliases):
                owner = self.get(self.aliases.get(taken, taken))
                if owner is not None and class_path(owner) != class_path(cls):
                    raise ValueError(f"{self.kind} name {taken!r} is already registered to {owner.__qualname__}")
            self[name] = cls
            self.aliases.update(dict.fromkeys(aliases, name))
            return cls

        return decorator

    def canonical(self, name: str) -> str:
        """The registered name ``name`` stands for: itself, or the name an alias points to."""
        return self.aliases.get(name, name)

    def lookup(self, name: str) -> type[T]:
        """The class registered as ``name`` (or an alias of it); an unknown name is a ConfigError listing the
        registered ones."""
        name = self.canonical(name)
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join([*self.special, *sorted(self)])}")
        return self[name]

    def name_of(self, cls: type) -> str | None:
        """The short name ``cls`` is registered under (not a parent's), or None."""
        return next((name for name, registered in self.items() if registered is cls), None)

    def class_path(self, value: Any) -> Any:
        """``{"class_path": ...}`` for a registered short name, and ``{"class_path": name, ...}`` with the full path,
        else ``value`` unchanged (for the CLI parser, which imports class paths itself)."""
        if isinstance(value, str) and self.canonical(value.strip()) in self:
            return {"class_path": class_path(self.lookup(value.strip()))}
        if isinstance(value, Mapping) and self.canonical(str(value.get("class_path", "")).strip()) in self:
            return {**value, "class_path": class_path(self.lookup(str(value["class_path"]).strip()))}
        return value

    def resolve(self, value: T | str | Mapping[str, Any]) -> T:
        """An instance from an instance, a registered short name, or ``{"class_path", "init_args"}``."""
        if isinstance(value, self.base):
            return value
        if isinstance(value, Mapping) and "class_path" in value:
            cls, args = self._import(str(value["class_path"])), dict(value.get("init_args") or {})
        elif isinstance(value, str):
            cls, args = self.lookup(value.strip()), {}
        else:
            raise ConfigError(f"{self.kind} must be a short name ({', '.join(sorted(self))}) or a class_path, got "
                              f"{value!r}")
        try:
            return cls(**args)
        except TypeError as err:  # a misspelled or missing init argument
            raise ConfigError(f"{self.kind} {cls.__name__}: {err}") from None

    def hparams(self, component: T) -> str | dict[str, Any]:
        """What a checkpoint records: the short name for a registered class with default init arguments (so stock
        configs read ``layout: packed`` as before), else ``{"class_path", "init_args"}``; both :meth:`resolve`."""
        cls, args = type(component), init_args(component)
        name = self.name_of(cls)
        if name is not None and _all_defaults(cls, args):
            return name
        return {"class_path": class_path(cls), "init_args": args}

    def _import(self, path: str) -> type[T]:
        if "." not in path:
            return self.lookup(path)
        module, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"{self.kind} class_path {path!r} cannot be imported: {err}") from None
        if not (inspect.isclass(cls) and issubclass(cls, self.base)):
            raise ConfigError(f"{self.kind} class_path {path!r} is not a {self.base.__name__}")
        return cls


def class_path(cls: type) -> str:
    """``module.QualName`` of a class, as YAML's ``class_path`` names it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def init_args(component: Any) -> dict[str, Any]:
    """The init arguments a component keeps as same-named attributes, when they are plain values (YAML-safe)."""
    params = inspect.signature(type(component)).parameters.values()
    names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    values = {name: getattr(component, name) for name in names if hasattr(component, name)}
    return {k: v for k, v in values.items() if v is None or isinstance(v, (int, float, str, bool))}


def _all_defaults(cls: type, args: dict[str, Any]) -> bool:
    """Whether every argument in ``args`` has its default value in ``cls``'s signature."""
    params = inspect.signature(cls).parameters
    return all(name in params and params[name].default is not inspect.Parameter.empty
               and params[name].default == value for name, value in args.items())
