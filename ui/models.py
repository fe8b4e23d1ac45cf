"""Cached model handles shared by every browser session, and greedy generation for the comparison page.

A handle carries a lock: scorers hook or perturb-and-restore the shared model, so two sessions take turns.
Nothing here prunes a cached model; pruning always happens on a copy (`workflow.prune`) or in a job.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import streamlit as st
import torch

from minillm_core.evaluation.generation import Generation, generate
from minillm_core.loading import LoadedModel, load_model
from minillm_core.planning import ModelGeometry
from minillm_core.workflow import geometry_of


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


def greedy_generate(handle: ModelHandle, prompt: str, max_new_tokens: int = 32) -> Generation:
    """Greedy continuation of `prompt` (no sampling, so both models are compared on equal terms)."""
    with handle.lock:  # the cached model is shared by every session
        return generate(handle.loaded.model, handle.loaded.tokenizer, prompt, max_new_tokens=max_new_tokens,
                        chat=False)
