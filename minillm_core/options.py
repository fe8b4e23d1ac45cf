"""The one options model: each option is declared once, on a typed config dataclass field, with its help and choices.

`option(...)` puts help, allowed values, CLI name and widget hints in the field's metadata; `describe(cls)` reads them
back for the CLI (`minillm_core.cli.options`) and the dashboard (`ui.widgets`), which generate their inputs from it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_KEY = "minillm"


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    cli: str | None = None,
    short: str | None = None,
    label: str | None = None,
    min: float | None = None,
    max: float | None = None,
    step: float | None = None,
    multiple: bool = False,
    hidden: bool = False,
    default_factory: Callable[[], Any] | None = None,
    unset: str = "all",
) -> Any:
    """A dataclass field that carries its user-facing description.

    `choices`: the allowed values (or a function returning them, for registries filled at import); `cli`: the flag
    name without dashes (default: the field name with `-`); `multiple`: a tuple of choices (a multiselect, a
    repeatable flag); `hidden`: not offered in front ends (set by code, still recorded); `unset`: what an optional
    number left empty (0 in a number widget) means, in a word or two ("all", "no limit").
    """
    meta = {_KEY: {"help": help, "choices": choices, "cli": cli, "short": short, "label": label, "min": min,
                   "max": max, "step": step, "multiple": multiple, "hidden": hidden, "unset": unset}}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class OptionSpec:
    """One option as the front ends see it."""

    name: str
    type: Any  # the base type: int, float, bool, str (Optional and tuple[...] unwrapped)
    default: Any
    help: str
    choices: tuple[Any, ...] | None
    optional: bool  # None is allowed
    multiple: bool
    cli: str
    short: str | None
    label: str
    min: float | None
    max: float | None
    step: float | None
    unset: str = "all"  # what None (0 in a number widget) means


def _base_type(hint: Any) -> tuple[Any, bool, bool]:
    """(base type, optional, is a tuple) of a field's annotation."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else str
    is_tuple = typing.get_origin(hint) is tuple
    if is_tuple:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is dict:
        hint = dict
    if typing.get_origin(hint) is typing.Literal:
        hint = type(typing.get_args(hint)[0])
    return hint, optional, is_tuple


def _sentence(text: str) -> str:
    """A widget label as a person writes it: first letter capitalised ("window length (tokens)" -> "Window ...")."""
    return text[:1].upper() + text[1:]


def describe(cls: type, defaults: Any | None = None) -> list[OptionSpec]:
    """The declared options of config dataclass `cls` (fields made with `option`, not hidden), in field order.

    `defaults`: an instance whose values replace the class defaults (a composite config's default member).
    """
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_KEY)
        if meta is None or meta["hidden"] or not f.init:
            continue
        base, optional, is_tuple = _base_type(hints[f.name])
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        out.append(OptionSpec(
            name=f.name, type=base, default=default, help=meta["help"],
            choices=tuple(choices) if choices is not None else None, optional=optional,
            multiple=meta["multiple"] or is_tuple, cli=meta["cli"] or f.name.replace("_", "-"), short=meta["short"],
            label=_sentence(meta["label"] or f.name.replace("_", " ")), min=meta["min"], max=meta["max"],
            step=meta["step"], unset=meta.get("unset", "all")))
    return out


def defaults_of(cls: type, defaults: Any | None = None) -> dict[str, Any]:
    """{option name: default} of the declared options."""
    return {o.name: o.default for o in describe(cls, defaults)}
