"""Shared widgets: scorer options built from a scorer's dataclass fields.

New scorers in `minillm_core.scoring.SCORERS` get their option widgets automatically.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import streamlit as st

from minillm_core.scoring import Scorer


def scorer_options(cls: type[Scorer], key: str) -> dict[str, Any]:
    """One widget per dataclass field of the scorer (int, float, bool, str, Literal); returns the options."""
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
