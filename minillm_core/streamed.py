"""Out-of-core pruning: a model bigger than memory pruned one decoder layer at a time from its safetensors files.

The module tree is built on the meta device (accelerate's `init_empty_weights`); the embeddings, final norm and head
are read from the checkpoint (safetensors `safe_open`, one tensor at a time), then each decoder layer in turn is
read, its heads and channels chosen by OBS on its actual inputs (the pruned model's outputs so far), pruned,
re-fitted, run forward for the next layer's inputs, written to its own shard and put back on the meta device. Peak
memory: the non-layer weights + one layer (dense and pruned) + the calibration activations, whatever the depth.
On CUDA the non-layer weights, the layer being processed and the activations are on the GPU; the other layers are
on the disk (or on the meta device, i.e. nowhere) and every finished layer is copied to the CPU only to be written.

The engine is the in-memory one (`reconstruction.prune_and_reconstruct` with load/done hooks), so the result is the
same tensor for tensor; the output is a pruned model directory (`load_pruned`, and `from_pretrained` when the widths
are uniform) with a `model.safetensors.index.json` over the shards. Widths must follow from the ratio alone (uniform
or schedule allocation): units are chosen per layer by OBS, so no score pass over the whole model is needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_module_tensor_to_device
from torch import nn

from minillm_core.allocation import build_plan
from minillm_core.calibration import SELF_SOURCE, CalibrationConfig, build_calibration
from minillm_core.devices import resolve_device
from minillm_core.errors import MiniLLMError, ModelLoadError, PlanError
from minillm_core.io import MANIFEST, PLAN_FILE, check_output_dir, manifest_for, staged_dir
from minillm_core.modeling import check_supported, get_adapter
from minillm_core.modeling.base import count_params, max_context
from minillm_core.planning import ModelGeometry, PlanConfig, PruningPlan
from minillm_core.progress import Progress, no_progress
from minillm_core.reconstruction import ReconstructConfig, prune_and_reconstruct
from minillm_core.scoring import GroupScores
from minillm_core.settings import user_path

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
STREAMABLE_ALLOCATIONS = ("uniform", "schedule")


class Checkpoint:
    """The tensors of a safetensors checkpoint (one file or an index over shards), read a few at a time. Files are
    opened only while reading: an open file stays memory-mapped, and every page read from it would stay in the
    process's resident memory until it is closed."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        self.folder = folder
        index = folder / INDEX_FILE
        try:
            if index.is_file():
                self.where = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            else:
                self.where = {}
                for file in sorted(folder.glob("*.safetensors")):
                    with safe_open(str(file), framework="pt") as f:
                        self.where.update(dict.fromkeys(f.keys(), file.name))
        except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
            raise ModelLoadError(f"cannot read weights in {folder}: {exc}") from None
        if not self.where:
            raise ModelLoadError(f"{folder} has no safetensors weights (out-of-core pruning reads safetensors)")

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors (copies in memory), each file opened once and closed again."""
        from safetensors import safe_open

        missing = [n for n in names if n not in self.where]
        if missing:
            raise ModelLoadError(f"the checkpoint in {self.folder} has no tensor {missing[0]!r}; does it belong to "
                                 "its config.json?")
        out: dict[str, torch.Tensor] = {}
        for file in dict.fromkeys(self.where[n] for n in names):
            try:
                with safe_open(str(self.folder / file), framework="pt") as f:
                    out |= {n: f.get_tensor(n) for n in names if self.where[n] == file}
            except Exception as exc:
                raise ModelLoadError(f"cannot read {self.folder / file}: {exc}") from None
        return out


def _return_freed_memory() -> None:
    """Give the memory of the finished layer back to the system (glibc keeps freed heap pages otherwise, and the
    resident size would creep up layer by layer); a no-op elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def _skeleton(source: Path, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The model's module tree with every parameter on the meta device and its buffers (rotary tables) on
    `device`."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read model directory {source}: missing or invalid config.json ({exc})") from None
    check_supported(config.model_type)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # a tied head is the embedding's parameter (counted and stored once)
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and buffer.device != device:
                module._buffers[name] = buffer.to(device)
    return model.eval()


def _load_params(model: nn.Module, module: nn.Module, ckpt: Checkpoint, dtype: torch.dtype,
                 device: torch.device) -> None:
    """Read every parameter of `module` (a part of `model`) from the checkpoint onto `device`."""
    prefix = {id(m): n for n, m in model.named_modules()}[id(module)]
    params = list(module.named_parameters())
    values = ckpt.read([f"{prefix}.{name}" if prefix else name for name, _ in params])
    for name, param in params:
        full = f"{prefix}.{name}" if prefix else name
        value = values.pop(full)
        if tuple(value.shape) != tuple(param.shape):
            raise ModelLoadError(f"tensor {full} is {tuple(value.shape)} in the checkpoint, {tuple(param.shape)} in "
                                 "config.json")
        set_module_tensor_to_device(module, name, device, value=value, dtype=dtype)


def _layers_prefix(model: nn.Module) -> str:
    layers = get_adapter(model).layers()
    names = {id(m): n for n, m in model.named_modules()}
    return names[id(layers[0])].rsplit(".", 1)[0] + "."


def streamable(config: PlanConfig, recon: ReconstructConfig, calibration: CalibrationConfig) -> None:
    """Refuse settings that need the whole model at once (raises `MiniLLMError` saying which)."""
    if config.allocation not in STREAMABLE_ALLOCATIONS:
        raise PlanError(f"out-of-core pruning takes widths from the ratio alone: allocation must be one of "
                        f"{', '.join(STREAMABLE_ALLOCATIONS)}, not {config.allocation!r}")
    if not recon.enabled or recon.select != "obs":
        raise MiniLLMError("out-of-core pruning chooses each layer's units by OBS and re-fits them as it goes: keep "
                           "the re-fit on (--reconstruct) with --recon-select obs")
    if calibration.source == SELF_SOURCE:
        raise MiniLLMError("calibration source 'self' generates text with the whole model; out-of-core pruning "
                           "needs a data set or a file (--calib c4, --calib-file)")


def prune_streamed(
    model: str | os.PathLike,
    out: str | os.PathLike,
    plan_config: PlanConfig,
    calibration: CalibrationConfig,
    recon: ReconstructConfig | None = None,
    data_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    progress: Progress = no_progress,
    device: str = "cpu",
) -> tuple[PruningPlan, dict[str, Any]]:
    """Prune the safetensors model directory `model` to `out` without ever holding more than one decoder layer:
    widths from `plan_config` (uniform or schedule), units by OBS per layer, re-fit with `recon`, on calibration rows
    from `calibration`, computed on `device` (auto: CUDA when present; only the layer being processed and the
    non-layer weights are there). Returns the plan the result follows and a report (parameters, shards, the re-fit).
    """
    from transformers import AutoTokenizer

    recon = recon or ReconstructConfig()
    streamable(plan_config, recon, calibration)
    source = user_path(model)
    if not (source / "config.json").is_file():
        raise ModelLoadError(f"out-of-core pruning needs a local model directory with config.json and safetensors "
                             f"weights; {source} is not one")
    target = check_output_dir(out, overwrite)  # before any work
    dev = resolve_device(device)
    net = _skeleton(source, dtype, dev)
    ckpt = Checkpoint(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise ModelLoadError(f"{source} has no usable tokenizer ({exc})") from None
    rows = build_calibration(tokenizer, calibration, data_dir=data_dir, max_length=max_context(net))
    adapter = get_adapter(net)
    geometry = ModelGeometry.from_model(net, adapter)
    widths_only = GroupScores("obs", [torch.zeros(s.num_heads) for s in geometry.layers],
                              [torch.zeros(s.intermediate) for s in geometry.layers])  # units: chosen by OBS
    plan = build_plan(geometry, widths_only, plan_config, model_name=str(model))
    layers = adapter.layers()
    prefix = _layers_prefix(net)
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    rest = [n for n, p in net.named_parameters() if id(p) not in in_layers]
    stored = [n for n in rest if n in ckpt.where]  # a tied head is not stored: tying fills it in
    for name, value in ckpt.read(stored).items():  # embeddings, final norm, head
        set_module_tensor_to_device(net, name, dev, value=value, dtype=dtype)
    net.tie_weights()
    missing = [n for n, p in net.named_parameters() if p.is_meta and n in rest]
    if missing:
        raise ModelLoadError(f"the checkpoint in {source} has no tensor {missing[0]!r} ({len(missing)} missing); "
                             "does it belong to its config.json?")
    weight_map: dict[str, str] = {}
    total = 0

    def write(tensors: dict[str, torch.Tensor], file: str) -> None:
        nonlocal total
        from safetensors.torch import save_file

        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp / file),
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        total += sum(v.numel() * v.element_size() for v in tensors.values())

    def load(i: int) -> None:
        _load_params(net, layers[i], ckpt, dtype, dev)

    def done(i: int) -> None:
        layer = adapter.layers()[i]  # the pruned module (surgery replaced its linears)
        write({f"{prefix}{i}.{k}": v for k, v in layer.state_dict().items()}, f"model-layer-{i:05d}.safetensors")
        layer.to("meta")  # freed: the next layer takes its place
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        _return_freed_memory()

    with staged_dir(target) as tmp:
        kept, from_pretrained_ok, report = prune_and_reconstruct(net, plan.layers, rows, recon, progress, load, done)
        state = net.state_dict()
        write({n: state[n] for n in stored}, "model-rest.safetensors")
        (tmp / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                 indent=1), encoding="utf-8")
        net.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        generation = source / "generation_config.json"
        if generation.is_file():
            shutil.copyfile(generation, tmp / generation.name)
        params = count_params(net)
        if params != plan.predicted_params:  # surgery and the planner disagree: a bug, never the user's fault
            raise AssertionError(f"pruned model has {params} parameters, the plan predicted {plan.predicted_params}")
        summary = {"target": recon.target, "damping": recon.damping, "select": recon.select,
                   "calibration_rows": int(rows.shape[0]), **report.to_dict()}
        from minillm_core.workflow import with_reconstruction

        result = with_reconstruction(dataclasses.replace(plan, layers=list(kept)), summary)
        result = dataclasses.replace(result, provenance={**result.provenance, "out_of_core": True})
        result.save(tmp / PLAN_FILE)
        (tmp / MANIFEST).write_text(json.dumps(manifest_for(net), indent=1), encoding="utf-8")
    return result, {"device": str(dev), "params_before": plan.original_params, "params_after": params,
                    "shards": len(set(weight_map.values())), "loads_with_from_pretrained": from_pretrained_ok,
                    "reconstruction": summary}
