"""Cached model handles shared by every browser session, and greedy generation for the comparison page.

A handle carries a lock: scorers hook or perturb-and-restore the shared model, so two sessions take turns.
Nothing here prunes a cached model; pruning always happens on a copy (`pipeline.apply_plan`) or in a job.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import streamlit as st
import torch

from minillm_core.loading import LoadedModel, load_model
from minillm_core.pipeline import geometry_of
from minillm_core.planning import ModelGeometry


@dataclass
class ModelHandle:
    loaded: LoadedModel
    geometry: ModelGeometry
    load_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock)


def _load(name: str, dtype: str, device: str) -> ModelHandle:
    t0 = time.perf_counter()
    loaded = load_model(name, dtype=dtype, device=device)
    return ModelHandle(loaded, geometry_of(loaded.model), time.perf_counter() - t0)


@st.cache_resource(max_entries=2, show_spinner="Loading the model (once per server process)...")
def model_handle(name: str, dtype: str = "auto", device: str = "auto") -> ModelHandle:
    """The original model for (name, dtype, device), shared by all sessions: read it, never modify it."""
    return _load(name, dtype, device)


@st.cache_resource(max_entries=2, show_spinner="Loading the pruned model...")
def pruned_handle(model_dir: str, dtype: str = "auto", device: str = "auto") -> ModelHandle:
    """A run's saved pruned model (a separate cache, so it never evicts the original)."""
    return _load(model_dir, dtype, device)


def device_label() -> str:
    if torch.cuda.is_available():
        return f"CUDA ({torch.cuda.get_device_name(0)})"
    return "CPU"


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def greedy_generate(handle: ModelHandle, prompt: str, max_new_tokens: int = 32) -> Generation:
    """Greedy continuation of `prompt` (no sampling, so both models are compared on equal terms)."""
    tok, model = handle.loaded.tokenizer, handle.loaded.model
    inputs = tok(prompt, return_tensors="pt").to(handle.loaded.device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with handle.lock, torch.inference_mode():
        t0 = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        seconds = time.perf_counter() - t0
    new = out[0, inputs["input_ids"].shape[1]:]
    return Generation(tok.decode(new, skip_special_tokens=True), int(new.numel()), seconds)
