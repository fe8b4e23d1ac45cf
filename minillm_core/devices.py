"""Devices and dtypes by name: `auto` picks CUDA when present; asking for CUDA without a GPU is an error.

Shared by model loading (`loading`) and pruned-model loading (`io`). A model too big for one device is spread over
the GPUs, the CPU memory and the disk by accelerate (`PlacementConfig`, evaluation only); `input_device` says where
such a model's inputs go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from minillm_core.errors import ModelLoadError
from minillm_core.options import option

DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's strategies


@dataclass(frozen=True)
class PlacementConfig:
    """How to spread a model that does not fit one device (accelerate's big-model inference)."""

    device_map: str | None = option(
        None, "Spread the model over devices for evaluation (accelerate): auto or balanced (even over the GPUs), "
        "balanced_low_0 (GPU 0 lightest), sequential (fill GPU 0 first); what fits no GPU goes to CPU memory, then "
        "to disk (a temporary folder under TMPDIR, removed after). For models bigger than one device.",
        choices=DEVICE_MAPS)
    max_memory: str | None = option(
        None, "With --device-map: the most each device may hold, e.g. '0=20GiB,1=20GiB,cpu=64GiB' (GPU index or "
        "cpu = size in B, KB, MB, GB, KiB, MiB, GiB); the rest goes to disk.")

    def __post_init__(self) -> None:
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            raise ModelLoadError(f"unknown device map {self.device_map!r}; allowed: {', '.join(DEVICE_MAPS)}")
        if self.max_memory is not None:
            if self.device_map is None:
                raise ModelLoadError("--max-memory applies with --device-map; allowed: "
                                     f"--device-map {'|'.join(DEVICE_MAPS)} --max-memory '0=20GiB,cpu=64GiB'")
            self.memory_budget()  # raises on a malformed value

    @property
    def spread(self) -> bool:
        return self.device_map is not None

    def memory_budget(self) -> dict[int | str, int] | None:
        """`max_memory` as accelerate takes it: {GPU index or "cpu": bytes}."""
        from accelerate.utils import convert_file_size_to_int

        if not self.max_memory:
            return None
        budget: dict[int | str, int] = {}
        for part in self.max_memory.split(","):
            key, sep, size = (p.strip() for p in part.partition("="))
            try:
                if not sep or not (key.isdigit() or key == "cpu"):
                    raise ValueError
                budget[int(key) if key.isdigit() else key] = convert_file_size_to_int(size)
            except (ValueError, TypeError):
                raise ModelLoadError(f"--max-memory {self.max_memory!r}: each entry is DEVICE=SIZE with DEVICE a GPU "
                                     "index or cpu and SIZE like 20GiB or 500MB, e.g. '0=20GiB,cpu=64GiB'") from None
        gpus = torch.cuda.device_count()
        absent = [k for k in budget if isinstance(k, int) and k >= gpus]
        if absent:
            raise ModelLoadError(f"--max-memory names GPU {absent[0]}, but this machine has {gpus} GPU(s); allowed "
                                 f"devices: {', '.join([*map(str, range(gpus)), 'cpu'])}")
        return budget


def spread(model_loader: Any, placement: PlacementConfig, device_map: str | dict[str, Any] | None = None,
           **kwargs: Any) -> nn.Module:
    """`model_loader(device_map=..., max_memory=..., offload_folder=..., **kwargs)` (`from_pretrained`, accelerate's
    `load_checkpoint_and_dispatch`) with a disk-offload folder of our own, removed with the model; `device_map`: the
    placement's strategy unless a map is given."""
    import shutil
    import tempfile
    import weakref

    folder = tempfile.mkdtemp(prefix="minillm-offload-")
    try:
        model = model_loader(device_map=device_map or placement.device_map, max_memory=placement.memory_budget(),
                             offload_folder=folder, **kwargs)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(model, shutil.rmtree, folder, True)
    return model


def input_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: its parameters' device, or, for a model spread by accelerate, the device that
    runs its first module, the embeddings (a GPU; CPU when they are in CPU memory or on disk)."""
    placed = getattr(model, "hf_device_map", None)
    if placed:
        first = next(iter(placed.values()))
        if isinstance(first, int):
            return torch.device("cuda", first)
        return torch.device(first if str(first).startswith("cuda") else "cpu")
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU; `cuda` without a GPU is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        return torch.device(device)
    raise ModelLoadError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is float32 on CPU (fast kernels, exact scores) and bfloat16 on GPUs that support it."""
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)
