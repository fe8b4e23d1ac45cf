"""Widgets generated from the config dataclasses (`minillm_core.options`) and from a scorer's dataclass fields,
and the run picker the result pages share.

Choices render as select boxes (several choices: multiselect), booleans as checkboxes, bounded numbers as number
inputs or sliders; the defaults are the dataclass's, so the dashboard and the CLI cannot drift apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

import streamlit as st

from minillm_core.options import OptionSpec, describe


def _seed(key: str, value: Any) -> None:
    """Give the widget its default through session state only (never both a value and a key: Streamlit warns)."""
    if key not in st.session_state:
        st.session_state[key] = value


def _number(spec: OptionSpec, where: Any, key: str, value: Any, slider: bool) -> Any:
    cast = int if spec.type is int else float
    fmt = {"step": 1} if cast is int else {"format": "%.6g"}
    if spec.optional:  # None is shown as 0 ("all", "no limit")
        _seed(key, cast(value or 0))
        return cast(where.number_input(f"{spec.label} (0 = {spec.unset})", min_value=cast(0), key=key, help=spec.help,
                                       **fmt)) or None
    _seed(key, cast(value))
    bounds = {k: cast(v) for k, v in (("min_value", spec.min), ("max_value", spec.max)) if v is not None}
    if slider and bounds.keys() == {"min_value", "max_value"}:
        return cast(where.slider(spec.label, step=cast(spec.step or 1), key=key, help=spec.help, **bounds))
    return cast(where.number_input(spec.label, key=key, help=spec.help, **bounds, **fmt))


def option_widget(spec: OptionSpec, key: str, value: Any, where: Any = st, choices: Sequence[Any] | None = None,
                  slider: bool = False) -> Any:
    """One input for one declared option; returns the chosen value (typed as the field)."""
    choices = list(choices if choices is not None else spec.choices or [])
    if spec.multiple:
        _seed(key, [v for v in (value or ()) if v in choices])
        st.session_state[key] = [v for v in st.session_state[key] if v in choices]  # choices may have narrowed
        return tuple(where.multiselect(spec.label, choices, key=key, help=spec.help))
    if choices:
        _seed(key, value if value in choices else choices[0])
        return where.selectbox(spec.label, choices, key=key, help=spec.help)
    if spec.type is bool:
        _seed(key, bool(value))
        return where.checkbox(spec.label, key=key, help=spec.help)
    if spec.type in (int, float):
        return _number(spec, where, key, value, slider)
    _seed(key, "" if value is None else str(value))
    text = where.text_input(spec.label, key=key, help=spec.help)
    return (text.strip() or None) if spec.optional else text


def config_widgets(
    cls: type,
    key: str,
    defaults: Any | None = None,
    *,
    only: Sequence[str] | None = None,
    choices: dict[str, Sequence[Any]] | None = None,
    sliders: Sequence[str] = (),
    columns: int = 1,
) -> dict[str, Any]:
    """Inputs for the declared options of `cls` (or `only` those), defaulting to `defaults` or the class defaults.

    Returns {field name: value}; build the config with `dataclasses.replace(defaults or cls(), **values)`.
    `choices` narrows or supplies choices per field (e.g. the model's layer indices); `sliders` names bounded numbers
    to show as sliders.
    """
    specs = [s for s in describe(cls, defaults) if s.type is not dict and (only is None or s.name in only)]
    if only is not None:  # the caller's order
        specs.sort(key=lambda s: list(only).index(s.name))
    cols = st.columns(columns) if columns > 1 else [st]
    # Streamlit forgets the state of widgets a run did not draw: keep the values so they survive other pages.
    saved = st.session_state.setdefault(f"_saved:{key}", {})
    values = {}
    for i, spec in enumerate(specs):
        values[spec.name] = option_widget(spec, f"{key}.{spec.name}", saved.get(spec.name, spec.default),
                                          cols[i % len(cols)], (choices or {}).get(spec.name), spec.name in sliders)
    saved.update(values)
    return values


def scorer_options(cls: type, key: str) -> dict[str, Any]:
    """One widget per dataclass field of a scorer (int, float, bool, str, Literal); returns the options."""
    if not dataclasses.is_dataclass(cls):
        return {}
    hints = typing.get_type_hints(cls)
    options: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name.startswith("_") or not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        hint, wkey = hints.get(f.name), f"{key}.{f.name}"
        if typing.get_origin(hint) is typing.Literal:
            choices = list(typing.get_args(hint))
            options[f.name] = st.selectbox(f.name, choices, index=choices.index(default) if default in choices
                                           else 0, key=wkey)
        elif hint is bool or isinstance(default, bool):
            options[f.name] = st.checkbox(f.name, value=bool(default), key=wkey)
        elif hint is int or isinstance(default, int):
            options[f.name] = int(st.number_input(f.name, value=int(default or 0), step=1, key=wkey))
        elif hint is float or isinstance(default, float):
            options[f.name] = float(st.number_input(f.name, value=float(default or 0.0), format="%.6g", key=wkey))
        elif hint is str or isinstance(default, str):
            options[f.name] = st.text_input(f.name, value=default or "", key=wkey)
    return options


def run_picker(done: Sequence[Any], message: str) -> Any:
    """The finished run a page shows: the URL's `?job=` when it names one (Compare links, a refresh), else the
    newest. With no run, `message` and the page stops."""
    if not done:
        st.info(message)
        st.stop()
    ids = [r.id for r in done]
    wanted = st.query_params.get("job")
    return st.selectbox("Run", done, index=ids.index(wanted) if wanted in ids else 0,
                        format_func=lambda r: f"{r.name} · {r.model} · {r.id}")


def next_step(page: str, label: str) -> None:
    """A divider and a link to the page that usually comes next (skipped where the page runs without the router's
    navigation, as in a test that runs one page file on its own)."""
    from streamlit.errors import StreamlitAPIException

    st.divider()
    with contextlib.suppress(StreamlitAPIException):
        st.page_link(page, label=label, icon=":material/arrow_forward:")
