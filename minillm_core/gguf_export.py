"""Write a (pruned) LLaMA-family model as a GGUF file that llama.cpp runs, per-layer widths included.

Uniform widths are written as llama.cpp's `llama` graph; per-layer widths as `deci` (Llama-3.1-Nemotron's graph,
which reads head counts and FFN widths per layer). Quantization uses the `gguf` package's NumPy quantizers.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from minillm_core.errors import ExportError
from minillm_core.modeling import LayerShape, get_adapter, max_context
from minillm_core.options import option
from minillm_core.outputs import clean_leftovers, public_mode, write_failure
from minillm_core.settings import user_path

logger = logging.getLogger(__name__)

GGUF_DTYPES = ("f32", "f16", "q8_0", "q4_0")
#: GGML's block length of the quantized types: a quantized matrix's rows (its input width) must be a multiple of it.
QUANT_BLOCK = 32


@dataclass(frozen=True)
class GGUFConfig:
    """How to write a GGUF file for llama.cpp."""

    dtype: str = option("f16", "Weight type of the matrices: f32, f16, q8_0 or q4_0 (quantized with the gguf "
                        "package's NumPy quantizers; norms stay f32; with q4_0 the embedding/output matrix is "
                        "q8_0, as llama.cpp keeps it at higher precision; a matrix whose input width is not a "
                        "multiple of 32 falls back to f16).", choices=GGUF_DTYPES)
    tokenizer_from: str | None = option(
        None, "A GGUF file whose tokenizer.* fields to copy (same vocabulary as the model). Default: the GGUF the "
        "model came from (the bundled model, a .gguf source, a tokenizer.gguf in the model directory, or the source "
        "recorded in a pruned model's plan).")

    def __post_init__(self) -> None:
        if self.dtype not in GGUF_DTYPES:
            raise ExportError(f"unknown GGUF dtype {self.dtype!r}; allowed: {', '.join(GGUF_DTYPES)}")


@dataclass
class GGUFExport:
    """What was written: where, as which llama.cpp graph, and how each tensor was stored."""

    path: Path
    arch: str
    dtype: str
    size_bytes: int
    tensor_types: dict[str, int]
    fallbacks: list[str] = field(default_factory=list)  # matrices kept in f16 because they cannot be quantized
    padded_layers: list[int] = field(default_factory=list)  # FFN-free layers given zero channels (see _layer_arrays)
    tokenizer_source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "arch": self.arch, "dtype": self.dtype, "size_bytes": self.size_bytes,
                "size_mb": self.size_bytes / 1e6, "tensor_types": self.tensor_types, "fallbacks": self.fallbacks,
                "padded_layers": self.padded_layers, "tokenizer_source": self.tokenizer_source}


def rope_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of q/k (`[n_heads * head_dim, ...]`, or a bias) from HF's rotate-half order to llama.cpp's interleaved
    rotary pairs, head by head (convert_hf_to_gguf's `LlamaModel.permute`, with this layer's head count)."""
    if n_heads == 0:
        return weight
    return (weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def check_exportable(model: nn.Module) -> list[LayerShape]:
    """The per-layer widths if llama.cpp can run this model, else an `ExportError` saying why.

    llama.cpp's `deci` graph treats a layer with no attention heads as attention-free and one with no FFN channels
    as FFN-free; it reads the head size from `key_length`, so every width is allowed except no heads at all in
    layer 0 (llama.cpp sizes its KV cache from layer 0).
    """
    adapter = get_adapter(model)
    if adapter.gguf_arch is None:
        adapter.gguf_model_tensors()  # raises the family's "no route" error
    rope = dict(getattr(model.config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"rope scaling {rope.get('rope_type')!r} is not exported to GGUF yet; only default RoPE")
    shapes = adapter.layer_shapes()
    if shapes[0].num_heads == 0:
        raise ExportError("layer 0 keeps no attention head; llama.cpp needs at least one there (plan with "
                          "gguf_compatible, or protect layer 0)")
    return shapes


def _gguf():
    import gguf

    return gguf


def _qtype(name: str, array: np.ndarray, dtype: str, fallbacks: list[str]):
    """The GGML type of one tensor: norms and biases f32; matrices the requested type, with the two exceptions
    `GGUFConfig.dtype` documents."""
    T = _gguf().GGMLQuantizationType
    if array.ndim == 1:
        return T.F32
    wanted = {"f32": T.F32, "f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}[dtype]
    if wanted == T.Q4_0 and name in ("token_embd.weight", "output.weight"):
        wanted = T.Q8_0
    if wanted in (T.Q8_0, T.Q4_0) and array.shape[-1] % QUANT_BLOCK:
        fallbacks.append(name)
        return T.F16
    return wanted


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float32).numpy()


def _layer_arrays(adapter, index: int, shape: LayerShape) -> tuple[dict[str, np.ndarray], LayerShape, bool]:
    """Layer `index`'s tensors as float32 arrays under llama.cpp names, q/k rows permuted for its rotary layout.

    A layer that keeps heads but no FFN channel gets `QUANT_BLOCK` zero channels: llama.cpp skips an FFN-free
    layer entirely, attention output included; zero channels add exactly nothing (silu(0) * 0 = 0, zero columns).
    """
    arrays = {k: _numpy(v) for k, v in adapter.gguf_layer_tensors(adapter.layers()[index]).items()}
    for name in list(arrays):
        if name.startswith(("attn_q.", "attn_k.")):
            heads = shape.num_heads if name.startswith("attn_q.") else shape.num_kv_heads
            arrays[name] = rope_permute(arrays[name], heads)
    if shape.num_heads == 0:  # attention-free layer: llama.cpp reads no attention tensors for it
        arrays = {k: v for k, v in arrays.items() if not k.startswith("attn_")}
    padded = shape.intermediate == 0 and shape.num_heads > 0
    if padded:
        hidden = arrays["ffn_norm.weight"].shape[0]
        for name in ("ffn_gate.weight", "ffn_up.weight"):
            arrays[name] = np.zeros((QUANT_BLOCK, hidden), np.float32)
        arrays["ffn_down.weight"] = np.zeros((hidden, QUANT_BLOCK), np.float32)
        shape = LayerShape(shape.num_heads, shape.num_kv_heads, QUANT_BLOCK)
    elif shape.intermediate == 0:
        arrays = {k: v for k, v in arrays.items() if not k.startswith("ffn_")}
    return arrays, shape, padded


def tokenizer_fields(path: Path) -> list[tuple[str, Any, Any, Any]]:
    """Every `tokenizer.*` field of a GGUF file as (key, value, value type, array item type)."""
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises several types on files that are not GGUF
        raise ExportError(f"cannot read the tokenizer GGUF {path}: {exc}") from exc
    out = []
    for key, f in reader.fields.items():
        if key.startswith("tokenizer."):
            sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
            out.append((key, f.contents(), f.types[0], sub))
    if not any(k == "tokenizer.ggml.tokens" for k, *_ in out):
        raise ExportError(f"{path} has no tokenizer (no tokenizer.ggml.tokens field)")
    return out


def _metadata(writer, model: nn.Module, shapes: list[LayerShape], arch: str, head_dim: int, dtype: str,
              name: str) -> None:
    gguf, c = _gguf(), model.config
    per_layer = arch == "deci"
    writer.add_name(name)
    writer.add_context_length(max_context(model) or 2048)
    writer.add_embedding_length(int(c.hidden_size))
    writer.add_block_count(len(shapes))
    writer.add_feed_forward_length([s.intermediate for s in shapes] if per_layer else shapes[0].intermediate)
    writer.add_head_count([s.num_heads for s in shapes] if per_layer else shapes[0].num_heads)
    writer.add_head_count_kv([s.num_kv_heads for s in shapes] if per_layer else shapes[0].num_kv_heads)
    # Explicit head size: otherwise llama.cpp derives it as hidden / heads of layer 0, wrong once heads are removed.
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    rope = dict(getattr(c, "rope_parameters", None) or {})
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    writer.add_vocab_size(int(c.vocab_size))
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[dtype]
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tensor(writer, name: str, array: np.ndarray, dtype: str, fallbacks: list[str], types: Counter) -> None:
    gguf = _gguf()
    qtype = _qtype(name, array, dtype, fallbacks)
    types[qtype.name] += 1
    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, array.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)


def write_gguf(model: nn.Module, out: str | os.PathLike, config: GGUFConfig, tokenizer_gguf: Path,
               name: str = "pruned", overwrite: bool = False) -> GGUFExport:
    """Write `model` to `out` as GGUF, atomically (a temporary sibling, then one rename; on failure `out` is
    untouched). `tokenizer_gguf` supplies the `tokenizer.*` fields; its vocabulary must match the model's."""
    gguf = _gguf()
    out = check_output_file(out, overwrite)
    shapes = check_exportable(model)
    adapter = get_adapter(model)
    fields = tokenizer_fields(tokenizer_gguf)
    n_tokens = len(next(v for k, v, *_ in fields if k == "tokenizer.ggml.tokens"))
    vocab = adapter.gguf_model_tensors()["token_embd.weight"].shape[0]
    if n_tokens != vocab:
        raise ExportError(f"the tokenizer in {tokenizer_gguf} has {n_tokens} tokens but the model's embedding has "
                          f"{vocab} rows; pass the GGUF of this model's own tokenizer")
    arch = "llama" if len(set(shapes)) == 1 and shapes[0].intermediate > 0 else "deci"
    padded: list[int] = []
    fallbacks: list[str] = []
    types: Counter = Counter()
    for line in clean_leftovers(out):
        logger.warning("an interrupted export of %s: %s", out, line)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.partial-{os.getpid()}-", suffix=".gguf", dir=out.parent)
    except OSError as exc:
        raise ExportError(f"could not write {out}: {write_failure(exc)}") from exc
    os.close(fd)
    tmp = Path(name)
    try:
        public_mode(tmp)
        writer = gguf.GGUFWriter(tmp, arch)
        for key, value, vtype, sub in fields:
            writer.add_key_value(key, value, vtype, sub_type=sub)
        for tname, tensor in adapter.gguf_model_tensors().items():
            _tensor(writer, tname, _numpy(tensor), config.dtype, fallbacks, types)
        for i, shape in enumerate(shapes):  # one layer's float32 arrays at a time, converted as they are added
            arrays, shapes[i], pad = _layer_arrays(adapter, i, shape)
            padded += [i] if pad else []
            for tname, array in arrays.items():
                _tensor(writer, f"blk.{i}.{tname}", array, config.dtype, fallbacks, types)
        _metadata(writer, model, shapes, arch, adapter.head_dim, config.dtype, name)  # the widths as written
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except OSError as exc:
        raise ExportError(f"could not write {out}: {write_failure(exc)}; nothing was changed there") from exc
    finally:
        tmp.unlink(missing_ok=True)
    if fallbacks:
        logger.warning("%d matrices kept in f16 (input width not a multiple of %d): %s", len(fallbacks), QUANT_BLOCK,
                       ", ".join(fallbacks[:4]) + (" ..." if len(fallbacks) > 4 else ""))
    return GGUFExport(out, arch, config.dtype, out.stat().st_size, dict(types), fallbacks, padded,
                      str(tokenizer_gguf))


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def check_output_file(out: str | os.PathLike, overwrite: bool) -> Path:
    """`out` as a path a new file may be written to: refuses a directory, an existing file unless `overwrite`, and
    a parent that is not a directory (checked before any work is done)."""
    path = user_path(out)
    if path.is_dir():
        raise ExportError(f"{path} is a directory; --out takes a file name such as model.gguf")
    if path.exists() and not overwrite:
        raise ExportError(f"{path} exists; choose another name or pass overwrite")
    if path.is_file() and not _is_gguf(path):  # overwrite replaces a GGUF file, never someone's other file
        raise ExportError(f"{path} exists and is not a GGUF file; overwrite only replaces GGUF files")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ExportError(f"cannot write {path}: {parent} is not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {parent}: {exc.strerror or exc}") from exc
    if not os.access(parent, os.W_OK):
        raise ExportError(f"cannot write {path}: {parent} is not writable")
    return path


__all__ = [
    "GGUF_DTYPES",
    "GGUFConfig",
    "GGUFExport",
    "check_exportable",
    "rope_permute",
    "tokenizer_fields",
    "write_gguf",
]
