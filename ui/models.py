"""Cached model handles shared by every browser session, and greedy generation for the comparison page.

A handle carries a lock: scorers hook or perturb-and-restore the shared model, so two sessions take turns.
Nothing here prunes a cached model; pruning always happens on a copy (`workflow.prune`) or in a job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
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


def greedy_generate(handle: ModelHandle, prompt: str, max_new_tokens: int = 32, chat: bool = False,
                    streamer: object = None) -> Generation:
    """Greedy continuation of `prompt` (no sampling, so both models are compared on equal terms); with `chat`,
    the prompt is a user turn of the tokenizer's chat template (instruct models)."""
    with handle.lock:  # the cached model is shared by every session
        return generate(handle.loaded.model, handle.loaded.tokenizer, prompt, max_new_tokens=max_new_tokens,
                        chat=chat, streamer=streamer)


def stream_generate(handle: ModelHandle, prompt: str, max_new_tokens: int, chat: bool, result: dict
                    ) -> Iterator[str]:
    """`greedy_generate` as text pieces while the model writes them (for `st.write_stream`); the finished
    `Generation` (token count, speed) is put in `result["generation"]`. Generation runs in a thread that holds the
    model's lock; the streamer's timeout ends the wait if it fails, and its error is raised here."""
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(handle.loaded.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                    timeout=300)
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result["generation"] = greedy_generate(handle, prompt, max_new_tokens, chat, streamer)
        except BaseException as exc:  # re-raised in the page's thread below
            failure.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if failure:
        raise failure[0]
