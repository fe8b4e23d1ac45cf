"""Typer options generated from the config dataclasses (`minillm_core.options`): each option is declared once.

A command parameter annotated with a config class (`plan: PlanConfig`) becomes that class's flags; the command receives
the built, validated config. `Annotated[EvalConfig, Only("limit", ...)]` offers a subset; a default instance sets the
defaults (`score: ScoreConfig = ScoreConfig("minillm")`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from minillm_core.errors import MiniLLMError
from minillm_core.options import OptionSpec, describe


@dataclass(frozen=True)
class Only:
    """Offer only these options of a config class on this command."""

    names: tuple[str, ...]

    def __init__(self, *names: str) -> None:
        object.__setattr__(self, "names", names)


def _param_name(spec: OptionSpec) -> str:
    return spec.cli.split("/")[0].replace("-", "_")


def _help(spec: OptionSpec) -> str:
    text = spec.help
    if spec.choices is not None and spec.type is not bool:
        allowed = ", ".join(map(str, spec.choices))
        text += f" Allowed: {allowed}{' (or all)' if spec.multiple else ''}."
    if spec.multiple:
        text += " Repeatable or comma-separated."
    return text


def _typer_param(spec: OptionSpec) -> inspect.Parameter:
    decls = [f"--{spec.cli}"] + ([spec.short] if spec.short else [])
    info = typer.Option(*decls, help=_help(spec), show_default=spec.default not in (None, (), {}))
    if spec.type is dict or spec.multiple:  # key=value pairs (scorer options)
        annotation, default = list[str] | None, None
    elif spec.type is bool:
        annotation, default = bool, spec.default
    else:
        annotation = spec.type | None if spec.optional else spec.type
        default = spec.default
    return inspect.Parameter(_param_name(spec), inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, info])


def parse_key_values(items: list[str] | None, flag: str = "--option") -> dict[str, Any]:
    """`key=value` items; values are read as JSON (numbers, booleans) or kept as strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MiniLLMError(f"{flag} must look like key=value, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out


def _convert(spec: OptionSpec, value: Any) -> Any:
    """A flag's value as the config field expects it."""
    if spec.type is dict:
        return parse_key_values(value, f"--{spec.cli}")
    if not spec.multiple:
        if spec.optional and spec.type is int and value == 0 and (spec.min or 0) >= 1:
            return None  # `--limit 0`: no limit (the option's None)
        return value
    if value is None:
        return spec.default
    items = [part.strip() for v in value for part in str(v).split(",") if part.strip()]
    if spec.choices is not None and items == ["all"]:
        return tuple(spec.choices)
    try:
        return tuple(spec.type(i) for i in items)
    except ValueError:
        kind = {int: "integers", float: "numbers"}.get(spec.type, "values")
        raise MiniLLMError(f"--{spec.cli} must be comma-separated {kind}, got {','.join(value)!r}") from None


@dataclass
class _Group:
    """One config-typed parameter of a command: its class, default instance and offered options."""

    cls: type
    default: Any
    specs: list[OptionSpec]

    def build(self, flat: dict[str, Any]) -> Any:
        values = {s.name: _convert(s, flat[_param_name(s)]) for s in self.specs}
        hook = getattr(self.cls, "from_flags", None)  # a config's own rule for combining flags
        return hook(self.default, **values) if hook else dataclasses.replace(self.default, **values)


def _groups_of(func: Callable[..., Any]) -> tuple[dict[str, _Group], list[inspect.Parameter]]:
    hints = typing.get_type_hints(func, include_extras=True)
    groups: dict[str, _Group] = {}
    params: dict[str, inspect.Parameter] = {}
    for name, p in inspect.signature(func).parameters.items():
        hint, only = hints[name], None
        if typing.get_origin(hint) is Annotated and isinstance(typing.get_args(hint)[1], Only):
            hint, only = typing.get_args(hint)[0], typing.get_args(hint)[1].names
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            params[name] = p.replace(annotation=hint)
            continue
        default = p.default if p.default is not inspect.Parameter.empty else hint()
        specs = [s for s in describe(hint, default) if only is None or s.name in only]
        groups[name] = _Group(hint, default, specs)
        for spec in specs:
            gp = _typer_param(spec)
            if gp.name in params and params[gp.name].default != gp.default:
                raise TypeError(f"{func.__name__}: option --{spec.cli} declared twice with different defaults")
            params.setdefault(gp.name, gp)
    return groups, list(params.values())


def config_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Expose `func`'s config-dataclass parameters as generated Typer options; bad values end as `error: ...`, exit 2.

    Use under `@app.command()`.
    """
    groups, params = _groups_of(func)

    @functools.wraps(func)
    def wrapper(**flat: Any) -> Any:
        kwargs = {k: v for k, v in flat.items() if k in inspect.signature(func).parameters and k not in groups}
        try:
            for name, group in groups.items():
                kwargs[name] = group.build(flat)
        except MiniLLMError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        return func(**kwargs)

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # typer must read the generated signature, not func's
    wrapper.config_groups = groups  # type: ignore[attr-defined]  (read by tests and docs)
    return wrapper


def offered_options(command: Callable[..., Any]) -> list[tuple[type, Any, OptionSpec, Any]]:
    """(config class, its default instance, option, flag default) for every generated flag of a command."""
    params = inspect.signature(command).parameters
    return [(g.cls, g.default, spec, params[_param_name(spec)].default)
            for g in command.config_groups.values() for spec in g.specs]
