"""Save and load pruned models: safetensors + config + tokenizer + plan + a shape manifest, never a pickle.

Uniform plans load with plain `from_pretrained`; any plan loads with `load_pruned`, which rebuilds per-layer widths.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minillm_core.devices import PlacementConfig, resolve_device, resolve_dtype, spread
from minillm_core.errors import MiniLLMError, ModelLoadError
from minillm_core.modeling import LayerPlanIndices, LayerShape, check_supported, get_adapter
from minillm_core.outputs import clean_leftovers, staging_dir, write_failure
from minillm_core.planning import PruningPlan
from minillm_core.settings import user_path
from minillm_core.surgery import prune_layer

logger = logging.getLogger(__name__)

MANIFEST = "minillm_manifest.json"
PLAN_FILE = "pruning_plan.json"
MANIFEST_FORMAT = 1


def manifest_for(model: nn.Module) -> dict[str, Any]:
    """Per-layer widths and adapter state: what `load_pruned` needs to rebuild the module tree."""
    adapter = get_adapter(model)
    layers = adapter.layers()
    shapes = adapter.layer_shapes()
    return {
        "format": MANIFEST_FORMAT,
        "model_type": model.config.model_type,
        "layers": [vars(s) for s in shapes],
        "layer_state": [adapter.layer_state(layer) for layer in layers],
        "loads_with_from_pretrained": all(
            s == adapter.original_shape() for s in shapes
        ),
    }


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


#: Files that mark a directory as minillm's own output: a pruned model (manifest), a LoRA adapter (plan beside
#: it), a recovery run (its checkpoint folder, live loss log, record). `overwrite` replaces only such directories.
OWN_MARKERS = (MANIFEST, PLAN_FILE, "checkpoint", "live_losses.jsonl", "live_perplexity.jsonl", "recovery.json")


def check_output_dir(out: str | Path, overwrite: bool = False) -> Path:
    """`out` as a directory minillm may write (checked before any work): absent or empty; with `overwrite`, also
    one that holds minillm's own output. Never a file, never a folder of other files (overwrite would delete them),
    never under a file, always under a writable parent. Raises `MiniLLMError` saying which and what to do."""
    out = user_path(out)
    parent = next((p for p in out.parents if p.exists()), Path("."))
    if out.exists() and not out.is_dir():
        raise MiniLLMError(f"{out} exists and is a file, not a directory")
    if not parent.is_dir():
        raise MiniLLMError(f"cannot write {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK):
        raise MiniLLMError(f"cannot write {out}: {parent} is not writable")
    if out.parent.is_dir():
        for line in clean_leftovers(out):
            logger.warning("an interrupted save of %s: %s", out, line)
    if out.exists() and not _is_empty_dir(out):
        if not overwrite:
            raise MiniLLMError(f"{out} exists and is not empty; choose another directory or pass overwrite")
        if not any((out / m).exists() for m in OWN_MARKERS):
            raise MiniLLMError(f"{out} holds files minillm did not write (no {MANIFEST}); overwrite only replaces a "
                               "directory minillm wrote: choose another directory")
    return out


def save_pruned(
    model: nn.Module, tokenizer: Any, out_dir: str | Path, plan: PruningPlan | None = None, overwrite: bool = False
) -> Path:
    """Write a pruned model to `out_dir` atomically: everything goes to a temporary sibling, then one rename.

    Refuses a non-empty `out_dir` unless `overwrite`, and even then one that minillm did not write
    (`check_output_dir`); on any failure (disk full included) `out_dir` is untouched.
    """
    out = check_output_dir(out_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(out) as tmp:
        model.save_pretrained(tmp)  # safetensors; transformers 5 never pickles here
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if plan is not None:
            plan.save(tmp / PLAN_FILE)
        (tmp / MANIFEST).write_text(json.dumps(manifest_for(model), indent=1), encoding="utf-8")
    return out


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A temporary sibling of `out` to write a model into, moved into place whole when the block ends without an
    error and removed in every case; a write failure (disk full included) is one `MiniLLMError` and `out` is
    untouched."""
    from safetensors import SafetensorError

    tmp = staging_dir(out)
    try:
        yield tmp
        _swap_in(tmp, out)
    except (OSError, SafetensorError) as exc:
        raise MiniLLMError(f"could not save the pruned model to {out}: {write_failure(exc)}; nothing was changed "
                           "there") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp` so that a reader sees either the old or the new directory, never a mix."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path / MANIFEST} is missing or not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ModelLoadError(f"{path / MANIFEST}: unsupported format {found!r}")
    _check_manifest(data, path / MANIFEST)
    return data


def _check_manifest(data: dict[str, Any], file: Path) -> None:
    """The fields `load_pruned` reads, with their types: a hand-edited or damaged manifest is bad input."""
    layers, states = data.get("layers"), data.get("layer_state")
    fields = ("num_heads", "num_kv_heads", "intermediate")
    problem = None
    if not isinstance(data.get("model_type"), str):
        problem = "'model_type' must be the architecture name"
    elif not isinstance(layers, list) or not layers or not isinstance(states, list) or len(states) != len(layers):
        problem = "'layers' and 'layer_state' must be lists with one entry per decoder layer"
    elif not all(isinstance(x, dict) and set(x) == set(fields) and all(
            isinstance(x[f], int) and not isinstance(x[f], bool) and x[f] >= 0 for f in fields) for x in layers):
        problem = f"every 'layers' entry must hold the non-negative integers {', '.join(fields)}"
    elif not all(x["num_heads"] == x["num_kv_heads"] == 0 or (
            0 < x["num_kv_heads"] <= x["num_heads"] and x["num_heads"] % x["num_kv_heads"] == 0) for x in layers):
        problem = "in every layer the query heads must be a multiple of the key/value heads"
    if problem:
        raise ModelLoadError(f"{file} is malformed: {problem}; re-save the model with minillm")


def load_pruned(path: str | Path, dtype: str = "auto", device: str = "auto",
                placement: PlacementConfig | None = None) -> tuple[nn.Module, Any]:
    """Load any pruned directory: rebuild the module tree at the saved widths, then read the safetensors weights
    (with a `placement` device map: accelerate reads them onto the devices, CPU memory and disk it spreads over)."""
    from accelerate import init_empty_weights
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = user_path(path)
    if not path.is_dir():
        raise ModelLoadError(f"pruned model directory {path} does not exist")
    manifest = read_manifest(path)
    check_supported(manifest.get("model_type"))
    config = AutoConfig.from_pretrained(path)
    # Parameters on the meta device (no allocation); buffers such as rotary inv_freq are real.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
    adapter = get_adapter(model)
    if len(manifest["layers"]) != len(adapter.layers()):
        raise ModelLoadError(f"{path / MANIFEST} lists {len(manifest['layers'])} layers, its config.json "
                             f"{len(adapter.layers())}")
    try:
        for i, (shape, state) in enumerate(zip(manifest["layers"], manifest["layer_state"], strict=True)):
            shape = LayerShape(**shape)
            if adapter.layer_shape(i) != shape:  # only the widths matter: the weights are read next
                prune_layer(adapter, i, LayerPlanIndices(tuple(range(shape.num_heads)),
                                                         tuple(range(shape.num_kv_heads)),
                                                         tuple(range(shape.intermediate))))
            adapter.restore_state(adapter.layers()[i], state)
    except (MiniLLMError, ValueError, IndexError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelLoadError(f"{path / MANIFEST} does not fit its config.json ({exc}); re-save the model with "
                             "minillm") from None
    if placement is not None and placement.spread:
        return _dispatch_pruned(model, path, placement, resolve_dtype(dtype, resolve_device(device))), _tokenizer(path)
    state_dict = {}
    try:
        for file in sorted(path.glob("*.safetensors")):
            state_dict.update(load_file(str(file)))
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"cannot read weights in {path}: corrupt or truncated safetensors file ({exc})") from exc
    try:
        _, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    except RuntimeError as exc:  # a tensor whose shape is not the manifest's
        first = str(exc).strip().splitlines()[-1].strip()
        raise ModelLoadError(f"weights in {path} do not match its manifest: {first}") from None
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta or unexpected:
        raise ModelLoadError(f"weights in {path} do not match its manifest (missing {still_meta[:3]}, "
                             f"unexpected {unexpected[:3]})")
    dev = resolve_device(device)
    model.to(device=dev, dtype=resolve_dtype(dtype, dev)).eval()
    return model, _tokenizer(path)


def _tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path) if (path / "tokenizer_config.json").is_file() else None


def _dispatch_pruned(model: nn.Module, path: Path, placement: PlacementConfig, dtype: torch.dtype) -> nn.Module:
    """The pruned tree (on the meta device, at its widths) filled from its safetensors files by accelerate and
    spread over devices as `placement` says."""
    from accelerate import infer_auto_device_map, load_checkpoint_and_dispatch
    from safetensors import SafetensorError

    index = path / "model.safetensors.index.json"
    files = sorted(path.glob("*.safetensors"))
    if not index.is_file() and len(files) != 1:
        raise ModelLoadError(f"{path} has {len(files)} safetensors files and no model.safetensors.index.json; "
                             "a device map reads one file or an indexed set")
    model.tie_weights()
    no_split = list(model._no_split_modules or [])
    device_map: str | dict[str, Any] = placement.device_map
    probe = infer_auto_device_map(model, max_memory=placement.memory_budget(), no_split_module_classes=no_split,
                                  dtype=dtype, clean_result=False)
    if set(probe.values()) == {"disk"}:  # accelerate cannot read a checkpoint straight to disk: the embeddings
        device_map = dict(probe) | {next(iter(probe)): "cpu"}  # (first module) stay in CPU memory
    try:
        model = spread(load_checkpoint_and_dispatch, placement, model=model, device_map=device_map,
                       checkpoint=str(index if index.is_file() else files[0]), no_split_module_classes=no_split,
                       dtype=dtype)
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot spread the weights in {path} over devices: {first}") from None
    return model.eval()


def load_plan(path: str | Path) -> PruningPlan | None:
    """The plan saved beside a pruned model, if any."""
    file = Path(path) / PLAN_FILE
    return PruningPlan.load(file) if file.is_file() else None


__all__ = ["MANIFEST", "OWN_MARKERS", "PLAN_FILE", "check_output_dir", "load_plan", "load_pruned", "manifest_for",
           "save_pruned"]
