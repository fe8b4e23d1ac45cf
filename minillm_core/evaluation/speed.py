"""Speed and size, measured not estimated: prefill latency, decode tokens/s, parameters, disk size, peak memory.

Medians over repeated runs after warm-up, with CUDA synchronisation; memory from the process (CPU) or the allocator.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minillm_core.progress import Progress, no_progress


@dataclass(frozen=True)
class SpeedConfig:
    batch_sizes: tuple[int, ...] = (1, 8)
    prompt_len: int = 128
    new_tokens: int = 32
    repeats: int = 5
    warmup: int = 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak, or this process's peak RSS on CPU (Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _prompt(vocab: int, batch: int, length: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(3, max(vocab, 4), (batch, length), generator=gen).to(device)


@torch.inference_mode()
def _decode_seconds(model: Any, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds for `new_tokens` greedy steps with the KV cache)."""
    device = ids.device
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    _sync(device)
    t1 = time.perf_counter()
    cache, token = out.cache, out.logits[:, -1:].argmax(-1)  # transformers 5: `cache` (was past_key_values)
    for _ in range(new_tokens):
        out = model(input_ids=token, cache=cache, use_cache=True)
        cache, token = out.cache, out.logits[:, -1:].argmax(-1)
    _sync(device)
    return t1 - t0, time.perf_counter() - t1


def measure_speed(model: Any, config: SpeedConfig | None = None, progress: Progress = no_progress
                  ) -> dict[str, float]:
    """Median prefill latency (ms) and decode throughput (tokens/s) per batch size; flat metric names."""
    config = config or SpeedConfig()
    device = next(model.parameters()).device
    vocab = int(getattr(model.config, "vocab_size", 32))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out: dict[str, float] = {}
    total = len(config.batch_sizes) * (config.warmup + config.repeats)
    done = 0
    for bs in config.batch_sizes:
        ids = _prompt(vocab, bs, config.prompt_len, device)
        prefill, decode = [], []
        for i in range(config.warmup + config.repeats):
            p, d = _decode_seconds(model, ids, config.new_tokens)
            if i >= config.warmup:
                prefill.append(p)
                decode.append(d)
            done += 1
            progress(done, total, f"speed (batch {bs})")
        out[f"speed/prefill_ms/bs{bs}"] = statistics.median(prefill) * 1000
        out[f"speed/decode_tps/bs{bs}"] = bs * config.new_tokens / statistics.median(decode)
    out["memory/peak_inference_mb"] = peak_memory_mb(device)
    return out


def disk_mb(path: str | Path) -> float:
    """Size of a model directory's weight files (safetensors), in MiB."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors")) / 2**20


def _memory_probe(model_name: str, dtype: str, device: str, prompt_len: int) -> dict[str, float]:
    """Runs in a fresh process: peak memory after loading, then after one batch-1 forward of `prompt_len`."""
    from minillm_core.loading import load_model

    loaded = load_model(model_name, dtype=dtype, device=device)
    dev = loaded.device
    after_load = peak_memory_mb(dev)
    with torch.inference_mode():
        loaded.model(input_ids=_prompt(len(loaded.tokenizer), 1, prompt_len, dev))
    _sync(dev)
    return {"memory/load_peak_mb": after_load, "memory/inference_peak_mb": peak_memory_mb(dev)}


def measure_memory_fresh(model_name: str, dtype: str = "auto", device: str = "auto", prompt_len: int = 128,
                         timeout_s: float = 600) -> dict[str, float]:
    """Peak memory of loading and running a model, measured in a fresh process so nothing else is counted."""
    import json
    import subprocess

    from minillm_core.errors import MiniLLMError

    cmd = [sys.executable, "-m", "minillm_core.evaluation.speed", model_name, dtype, device, str(prompt_len)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise MiniLLMError(f"memory probe failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    import json

    name, dt, dev, plen = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    print(json.dumps(_memory_probe(name, dt, dev, plen)))
