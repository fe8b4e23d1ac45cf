"""Measure a GGUF file in llama.cpp itself (the prebuilt CPU wheel `xllamacpp`): perplexity, greedy text, decode speed.

llama.cpp's server returns no log-probabilities for prompt tokens, so perplexity reads llama.cpp's final-norm hidden
state at every position (its `/embedding` endpoint, pooling none) and applies the GGUF's own output matrix, dequantized,
in PyTorch: every decoder layer runs in llama.cpp; only the last matrix product does not.
"""

from __future__ import annotations

import json
import logging
import statistics
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from minillm_core.errors import MiniLLMError
from minillm_core.evaluation.perplexity import PerplexityResult, token_windows
from minillm_core.options import option
from minillm_core.progress import Progress, no_progress

logger = logging.getLogger(__name__)

INSTALL = "pip install xllamacpp==2026.10.11549"


@dataclass(frozen=True)
class LlamaCppConfig:
    """How to run models in llama.cpp."""

    gguf_dtype: str = option("f16", "Weight type of the GGUF written for a model that is not a .gguf file yet: f32, "
                             "f16, q8_0 or q4_0.", choices=("f32", "f16", "q8_0", "q4_0"))
    threads: tuple[int, ...] = option((1,), "CPU threads for llama.cpp's decode-speed runs (repeat the flag for "
                                      "several, e.g. 1 and 2).", multiple=True)
    decode_tokens: int = option(64, "Tokens generated per decode-speed run (EOS ignored, so every model generates "
                                "the same number).", min=8)
    speed_repeats: int = option(5, "Decode-speed runs per model and thread count, interleaved across models; the "
                                "median and the spread are reported.", min=1)


def _server_module():
    try:
        import xllamacpp
    except ImportError as exc:
        raise MiniLLMError(f"llama.cpp evaluation needs the xllamacpp wheel: {INSTALL}") from exc
    return xllamacpp


class LlamaCpp:
    """One GGUF model served by llama.cpp in this process (a context manager: the server stops on exit).

    `embedding=True` starts it in embedding mode (hidden states per token); otherwise it generates.
    """

    def __init__(self, path: str | Path, n_ctx: int = 512, threads: int = 1, embedding: bool = False) -> None:
        xl = _server_module()
        path = Path(path)
        if not path.is_file():
            raise MiniLLMError(f"GGUF file {path} does not exist")
        p = xl.CommonParams()
        p.model.path = str(path)
        p.n_ctx = n_ctx
        p.n_batch = p.n_ubatch = n_ctx  # every window in one micro-batch
        p.n_parallel = 1
        p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads
        p.warmup = False
        p.verbosity = -1
        if embedding:
            p.embedding = True
            p.pooling_type = xl.llama_pooling_type.LLAMA_POOLING_TYPE_NONE
            p.embd_normalize = -1  # the raw final-norm output, not L2-normalised
        try:
            self._server = xl.Server(p)
        except Exception as exc:  # llama.cpp reports load failures as RuntimeError/ValueError with its own text
            raise MiniLLMError(f"llama.cpp could not load {path}: {exc}") from exc
        self.address = self._server.listening_address.rstrip("/")
        self.path = path

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_server", None) is not None:
            del self._server  # the destructor stops llama.cpp's main loop and frees the model
            self._server = None

    def _post(self, route: str, payload: dict[str, Any]) -> Any:
        req = urllib.request.Request(self.address + route, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=600) as f:
                return json.loads(f.read())
        except urllib.error.HTTPError as exc:
            raise MiniLLMError(f"llama.cpp refused {route}: {exc.read().decode(errors='replace')[:300]}") from exc

    def hidden_states(self, ids: list[int]) -> np.ndarray:
        """`[len(ids), hidden]` float32: the final-norm output at every position (embedding mode only)."""
        out = self._post("/embedding", {"content": [int(i) for i in ids]})
        return np.asarray(out[0]["embedding"], dtype=np.float32)

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenization of `text`, with the special tokens its GGUF asks for (BOS)."""
        return self._post("/tokenize", {"content": text, "add_special": True})["tokens"]

    def complete(self, ids: list[int], n_predict: int, ignore_eos: bool = False) -> dict[str, Any]:
        """Greedy continuation of the token ids: `tokens` (ids), `text`, and llama.cpp's `timings`."""
        out = self._post("/completion", {"prompt": [int(i) for i in ids], "n_predict": n_predict, "temperature": 0.0,
                                         "top_k": 1, "ignore_eos": ignore_eos, "cache_prompt": False,
                                         "return_tokens": True, "samplers": ["top_k"]})
        return {"tokens": out.get("tokens", []), "text": out.get("content", ""), "timings": out.get("timings", {})}


def output_matrix(path: str | Path) -> torch.Tensor:
    """The GGUF's output projection `[vocab, hidden]` as float32 (`output.weight`, or the tied `token_embd`)."""
    import gguf

    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    t = tensors.get("output.weight") or tensors["token_embd.weight"]
    return torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))  # a copy


def perplexity_llamacpp(path: str | Path, ids: torch.Tensor, seq_len: int = 128, limit: int | None = None,
                        threads: int | None = None, progress: Progress = no_progress) -> PerplexityResult:
    """Perplexity of a GGUF model on token ids `[n]` with the protocol of `evaluation.perplexity.perplexity`
    (the same non-overlapping windows, each scored on its own), computed by llama.cpp."""
    windows = token_windows(ids, seq_len, limit)
    head = output_matrix(path)
    threads = threads or torch.get_num_threads()
    nll = 0.0
    with LlamaCpp(path, n_ctx=seq_len, threads=threads, embedding=True) as llm:
        for i, window in enumerate(windows.tolist()):
            logits = torch.from_numpy(llm.hidden_states(window)) @ head.T  # [seq_len, vocab], float32
            nll += F.cross_entropy(logits[:-1], torch.tensor(window[1:]), reduction="sum").item()
            progress(i + 1, len(windows), "perplexity (llama.cpp)")
    return PerplexityResult.from_nll(nll, len(windows), seq_len)


def decode_speed(paths: dict[str, Path], prompt: list[int], config: LlamaCppConfig,
                 progress: Progress = no_progress) -> dict[str, dict[str, float]]:
    """Decode tokens/s at batch 1 of each named GGUF, per thread count: the models take turns run by run
    (interleaved, so drift in the machine's speed hits all alike); median, quartiles and every run are kept."""
    out: dict[str, dict[str, float]] = {name: {} for name in paths}
    total, done = len(config.threads) * config.speed_repeats * len(paths), 0
    for threads in config.threads:
        servers = {n: LlamaCpp(p, n_ctx=len(prompt) + config.decode_tokens + 8, threads=threads)
                   for n, p in paths.items()}
        try:
            runs: dict[str, list[float]] = {n: [] for n in paths}
            for s in servers.values():  # warm-up: page the weights in, build the graphs
                s.complete(prompt, 4, ignore_eos=True)
            for _ in range(config.speed_repeats):
                for n, s in servers.items():
                    t = s.complete(prompt, config.decode_tokens, ignore_eos=True)["timings"]
                    runs[n].append(float(t["predicted_per_second"]))
                    done += 1
                    progress(done, total, f"llama.cpp decode speed ({threads} thread(s))")
            for n, values in runs.items():
                q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
                out[n] |= {f"llamacpp/decode_tps/t{threads}": statistics.median(values),
                           f"llamacpp/decode_tps_q1/t{threads}": q[0], f"llamacpp/decode_tps_q3/t{threads}": q[2]}
                out[n][f"llamacpp/decode_runs/t{threads}"] = values  # type: ignore[assignment]
        finally:
            for s in servers.values():
                s.close()
    return out


__all__ = ["LlamaCpp", "LlamaCppConfig", "decode_speed", "output_matrix", "perplexity_llamacpp"]
