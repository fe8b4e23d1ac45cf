"""Shared widgets: scorer options built from a scorer's dataclass fields, and a time/memory estimate.

New scorers in `minillm_core.scoring.SCORERS` get their option widgets automatically.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import streamlit as st

from minillm_core.scoring import Need, Scorer

# Rough sustained throughput of a forward pass, in FLOP/s: conservative for a laptop CPU and a datacenter GPU.
_FLOPS = {"cpu": 2e10, "cuda": 2e12}
# Extra passes per calibration token: forward probes run a few losses; backward costs about two forwards.
_PASS_FACTOR = {Need.WEIGHTS: 0.0, Need.ACTIVATIONS: 1.0, Need.FORWARD_PROBES: 3.0, Need.BACKWARD: 3.0}


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


def estimate(cls: type[Scorer], params: int, calib_tokens: int, device: str) -> tuple[float, float]:
    """(seconds, peak extra memory in MB) for a scorer: 2*params FLOP per token and pass; weights-only is instant.

    A back-of-the-envelope figure shown before running, not a promise: activations hooks and probes vary.
    """
    passes = max(_PASS_FACTOR.get(n, 1.0) for n in cls.needs) if cls.needs else 0.0
    seconds = 0.5 + passes * 2 * params * calib_tokens / _FLOPS["cuda" if device.startswith("cuda") else "cpu"]
    extra_mb = params * 4 / 2**20 * (1.0 if Need.BACKWARD in cls.needs else 0.1 if passes else 0.0)
    return seconds, extra_mb
