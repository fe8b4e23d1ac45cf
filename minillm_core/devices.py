"""Devices and dtypes by name: `auto` picks CUDA when present; asking for CUDA without a GPU is an error.

Shared by model loading (`loading`) and pruned-model loading (`io`).
"""

from __future__ import annotations

import torch

from minillm_core.errors import ModelLoadError

DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")


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
