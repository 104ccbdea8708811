"""Short command-line errors: a misspelled option names the key and suggests the closest valid one.

jsonargparse answers a bad option with the full usage (~80 lines) and, for nested options, a union-type dump.
:class:`InspoArgumentParser` prints one line instead, in the CLI's own format, and exits with status 2 like every
other user error::

    inspo: error: unknown option 'model.los' (did you mean 'model.loss'?); `inspo fit --help` lists every option

Abbreviated options are refused (``--trainer.max_epoch`` would otherwise silently mean ``max_epochs``). With
``INSPO_DEBUG=1`` jsonargparse's own output is kept.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import sys
import typing
from typing import Any, NoReturn

from jsonargparse import ActionConfigFile, Namespace
from lightning.pytorch.cli import LightningArgumentParser
from typing_extensions import override

# jsonargparse / argparse messages for an option that does not exist, anywhere in a (multi-line) message.
UNKNOWN_KEY = [
    re.compile(r"Subcommand '[^']+' does not accept option '(?P<key>[^']+)'"),
    re.compile(r"Group '(?P<group>[^']+)' does not accept option '(?P<key>[^']+)'"),
    re.compile(r"^Option '(?P<key>[^']+)' is not accepted"),
    re.compile(r"unrecognized arguments: --(?P<key>[^\s=]+)"),
    re.compile(r"ambiguous option: --(?P<key>[^\s=]+) could match"),
]
NESTED_UNKNOWN = re.compile(r"Option '(?P<key>[^']+)' is not accepted")
PARSER_KEY = re.compile(r'^Parser key "(?P<parent>[^"]+)":')
CLASS_PATH = re.compile(r"class_path '(?P<path>[^']+)'")
TYPE = re.compile(r"<class '(?:builtins\.)?(?P<name>[\w.]+)'>")
LITERAL = re.compile(r"Expected a typing\.Literal\[(?P<options>.*)\]\. Got value: (?P<value>.*)")
EXPECTED = re.compile(r"^Expected a (?P<type>.+?)(\. Got value: (?P<value>.*))?$")
INNER_KEY = re.compile(r"Problem with given class_path '(?P<path>[^']+)':\s*Parser key \"(?P<key>[^\"]+)\":")
GIVEN = re.compile(r"^\s*Given value: (?P<value>.*)$", re.MULTILINE)
NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value")
MOVED = {"model.max_tokens_per_row": "model.layout.max_tokens_per_row (an option of the packed layout: "
                                     "--model.layout packed --model.layout.max_tokens_per_row N)"}
"""Options that moved (an old config file or command line still names them): the key and where it is now."""
DIVERGENCE_KEYS = ("model.loss.init_args.divergence", "model.loss.divergence")
"""A loss's f-divergence option: unknown to a loss that has no f-divergence form, refused with the reason."""


def not_admitted(key: str) -> str:
    from inspo.losses.divergence import not_admitted  # the loss registry is imported when parsing, not before

    return not_admitted(key)


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)
"""What argparse should read as a negative number, not an option (its own pattern misses exponents)."""


class InspoArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with one-line errors (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # argparse takes "-1e-8" (and "-inf") for an option name, so `--model.optim.eps -1e-8` said "expected one
        # argument"; with no option of ours looking like a number, every number is a value.
        self._negative_number_matcher = NEGATIVE_NUMBER

    @override
    def validate(self, namespace: Namespace, *args: Any, **kwargs: Any) -> None:
        from inspo.preflight import follow_root_dir

        follow_root_dir(namespace)  # before the check that a logger's save_dir is given
        super().validate(namespace, *args, **kwargs)

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # Nested parsers run with exit_on_error=False and expect the exception: leave those alone.
        if not self.exit_on_error or os.environ.get("INSPO_DEBUG") or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        # An error in a config file is raised by the main parser, which does not know the subcommand: say "fit".
        words = parser.prog.replace(" [options]", "").split()
        subcommand = words[-1] if len(words) > 1 else "fit"
        print(f"inspo: error: {explain(message, parser)}; `inspo {subcommand} --help` lists every option",
              file=sys.stderr)
        sys.exit(2)


def components() -> dict[str, Any]:
    """Option -> registry of the options that take a registered short name (imported when parsing, not before)."""
    from inspo.conditioning import CONDITIONINGS
    from inspo.layout import LAYOUTS
    from inspo.losses import LOSSES
    from inspo.reference import REFERENCES

    return {"model.loss": LOSSES, "model.conditioning": CONDITIONINGS, "model.layout": LAYOUTS,
            "model.reference": REFERENCES}


def expand_short_names(parser: LightningArgumentParser) -> None:
    """Let every component option (:func:`components`) take a registered short name as its class path, so that
    its init arguments can be set after it: ``loss: dpo`` in YAML, then ``--model.loss.beta 0.2``;
    ``--model.layout packed --model.layout.max_tokens_per_row 512``.

    jsonargparse only resolves a class by its class name (``DPOLoss``); a short name stays a plain string, and a
    string has no init arguments to set. So a short name becomes ``{"class_path": ...}`` first
    (:meth:`inspo.registry.Registry.class_path`); an unknown name is left alone, and the module then refuses it
    with the list of registered names.
    """
    for dest, registry in components().items():
        action = parser._option_string_actions.get(f"--{dest}")
        if action is not None and not getattr(action, "expands_short_names", False):
            action.__class__ = _expanding_action(type(action), registry)


def _expanding_action(base: type, registry: Any) -> type:
    """A subclass of jsonargparse's action ``base`` whose short names become class paths of ``registry`` first."""

    def expand(value: Any) -> Any:  # a short name, also as the class_path of a dict (YAML) or Namespace
        if isinstance(value, Namespace):
            expanded = registry.class_path(value.as_dict())
            return value if expanded == value.as_dict() else Namespace(**expanded)
        return registry.class_path(value)

    def _check_type_(self: Any, value: Any, **kwargs: Any) -> Any:
        cfg = kwargs.get("cfg")
        previous = cfg.get(self.dest) if isinstance(cfg, Namespace) else None
        expanded = expand(previous)
        if expanded is not previous:  # a short name set earlier (a config file, the default): nested options apply
            cfg[self.dest] = previous = expanded if isinstance(expanded, Namespace) else Namespace(expanded)
        if _is_nested_arg(value) and isinstance(previous, Namespace) and previous.get("class_path"):
            _check_init_arg(self.dest, previous["class_path"], value.key)
        named = expand(value)
        if isinstance(value, str) and named is not value and isinstance(previous, Namespace) \
                and previous.get("class_path") != named["class_path"]:
            cfg[self.dest] = None  # a name means that component with its own defaults, not the init args of another
        return base._check_type_(self, named, **kwargs)

    return type(f"ShortName{base.__name__}", (base,), {"_check_type_": _check_type_, "expands_short_names": True})


def _is_nested_arg(value: Any) -> bool:
    """Whether ``value`` is jsonargparse's ``NestedArg``, the value of ``--model.loss.beta`` after ``--model.loss``."""
    return isinstance(value, tuple) and getattr(value, "_fields", None) == ("key", "val")


def _check_init_arg(dest: str, class_path: str, key: str) -> None:
    """Refuse an init argument the chosen class does not take (``--model.loss simpo --model.loss.bta 2``).

    jsonargparse would go on to read the option as a list item (``model.loss`` may be a list of losses) and the error
    then spoke of lists; this one names the class and its options."""
    from inspo.errors import ConfigError

    cls = _nested_class(class_path, None)
    if cls is None or any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values()):
        return
    name, names = key.removeprefix("init_args.").split(".")[0], _init_names(cls)
    if name in names:
        return
    option = f"{dest}.{name}"
    if option in DIVERGENCE_KEYS:
        raise ConfigError(not_admitted(option))
    raise ConfigError(f"unknown option {option!r} for {dest} {cls.__name__}"
                      f"{suggest(option, [f'{dest}.{n}' for n in names])}; its options: {', '.join(names) or 'none'}")


def explain(message: str, parser: LightningArgumentParser) -> str:
    """One line for a jsonargparse error message: the key at fault, what is wrong, a suggestion if any."""
    message = message.strip()
    names = option_names(parser)
    for pattern in UNKNOWN_KEY:
        match = pattern.search(message)
        if match:
            key = ".".join(filter(None, (match.groupdict().get("group"), match["key"])))
            if key in MOVED:
                return f"option {key!r} moved to {MOVED[key]}"
            if key in DIVERGENCE_KEYS:
                return not_admitted(key)
            return f"unknown option {key!r}{suggest(key, names)}"
    match = PARSER_KEY.match(message)
    if match is None:
        return message.splitlines()[0]
    parent = match["parent"]
    nested = NESTED_UNKNOWN.search(message)
    if nested:
        class_path = CLASS_PATH.search(message)
        cls = _nested_class(class_path["path"] if class_path else None, _action(parser, parent))
        infix = "." if cls is None or dataclasses.is_dataclass(cls) else ".init_args."  # how YAML nests it
        fields = _init_names(cls)
        key = f"{parent}{infix}{nested['key']}"
        if key in DIVERGENCE_KEYS:
            return not_admitted(key)
        return f"unknown option {key!r}{suggest(key, [f'{parent}{infix}{name}' for name in fields])}"
    inner = INNER_KEY.search(message)
    if inner:  # a field of a nested class (model.optim.lr): name it in full, judge the lines below it
        cls = _nested_class(inner["path"], _action(parser, parent))
        infix = "." if cls is None or dataclasses.is_dataclass(cls) else ".init_args."
        line_start = message.rfind("\n", 0, inner.start()) + 1
        indent = len(message[line_start:]) - len(message[line_start:].lstrip())
        below = []  # the inner error only: lines indented deeper than its "- Problem with given class_path" line
        for line in message[inner.end():].splitlines()[1:]:
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            below.append(line)
        parent, message = f"{parent}{infix}{inner['key']}", "\n".join(["", *below])
    literal = LITERAL.search(message)
    if literal:
        options = ", ".join(o.strip().strip("'\"") for o in literal["options"].split(","))
        return f"{parent}: invalid value {literal['value'].strip()!r}; choose one of: {options}"
    details = [TYPE.sub(r"\g<name>", line.strip().removeprefix("- ")) for line in message.splitlines()[1:]]
    details = [line for line in details if line and not line.startswith(NOISE)]
    expected = [EXPECTED.match(line) for line in details]
    if details and all(expected):  # only type mismatches: say which value and which types
        given = GIVEN.search(message)
        value = expected[0]["value"] or (given["value"] if given else "?")
        types = " or ".join("null" if m["type"] == "NoneType" else m["type"] for m in expected)
        return f"{parent}: invalid value {value.strip()!r}: expected {types}"
    return f"{parent}: {' '.join(details[:2]) or 'invalid value'}"


def suggest(key: str, names: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest name, or an empty string."""
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def option_names(parser: LightningArgumentParser) -> list[str]:
    """Every option key of ``parser`` and of its subcommands (``model.loss``, ``trainer.max_epochs``, ...)."""
    names: list[str] = []
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict) and all(hasattr(sub, "_actions") for sub in choices.values()):
            for sub in choices.values():  # the subcommands' parsers
                names.extend(option_names(sub))
        elif action.dest and not action.dest.endswith(".help") and not isinstance(action, ActionConfigFile):
            names.append(action.dest)
    return sorted(set(names))


def _action(parser: LightningArgumentParser, dest: str) -> Any:
    for action in parser._actions:
        if action.dest == dest:
            return action
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):
            for sub in choices.values():
                found = _action(sub, dest) if hasattr(sub, "_actions") else None
                if found is not None:
                    return found
    return None


def _nested_class(class_path: str | None, action: Any) -> type | None:
    """The class named by ``class_path``, or the (dataclass) type hint of ``action``."""
    if class_path:
        module, _, name = class_path.rpartition(".")
        try:
            return getattr(__import__(module, fromlist=[name]), name)
        except (ImportError, AttributeError):
            return None
    hint = getattr(action, "_typehint", None)
    return next((c for c in typing.get_args(hint) or [hint] if inspect.isclass(c) and c is not type(None)), None)


def _init_names(cls: type | None) -> list[str]:
    """Fields of a dataclass, or the named init parameters of a class."""
    if cls is None:
        return []
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    params = inspect.signature(cls).parameters.values()
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
