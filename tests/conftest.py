"""Shared fixtures: tiny random models built in-process (no downloads) and the offline data mirror."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_config(kind: str):
    """Tiny configs of every supported family; widths chosen so uniform head pruning stays config-expressible."""
    from transformers import BloomConfig, LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

    common = {"vocab_size": 96, "num_hidden_layers": 4}
    if kind == "llama-gqa":
        return LlamaConfig(hidden_size=48, intermediate_size=80, num_attention_heads=6, num_key_value_heads=2,
                           **common)
    if kind == "llama-mha":
        return LlamaConfig(hidden_size=48, intermediate_size=80, num_attention_heads=4, num_key_value_heads=4,
                           **common)
    if kind == "mistral":
        return MistralConfig(hidden_size=48, intermediate_size=80, num_attention_heads=6, num_key_value_heads=2,
                             **common)
    if kind == "qwen2":
        return Qwen2Config(hidden_size=48, intermediate_size=80, num_attention_heads=6, num_key_value_heads=3,
                           **common)
    if kind == "opt":
        return OPTConfig(hidden_size=48, ffn_dim=80, num_attention_heads=4, word_embed_proj_dim=48,
                         max_position_embeddings=64, **common)
    if kind == "bloom":
        return BloomConfig(hidden_size=48, n_layer=4, n_head=6, vocab_size=96)
    raise ValueError(kind)


def tiny_model(kind: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind))
    # Random biases and norm gains, so tests see every parameter (HF initialises them to 0/1).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture
def data_dir(monkeypatch) -> Path:
    """The offline data mirror (CI: ../shared/data), exported as MINILLM_DATA_DIR."""
    path = Path(os.environ.get("MINILLM_DATA_DIR", SHARED_DATA))
    if not path.is_dir():
        pytest.skip(f"offline data mirror not found at {path}")
    monkeypatch.setenv("MINILLM_DATA_DIR", str(path))
    return path


def tiny_tokenizer(vocab_size: int = 96):
    """A word-level tokenizer over a tiny vocabulary, built in-process (no downloads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab_size - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def save_tiny(kind: str, path: Path) -> Path:
    """A tiny model + tokenizer saved as a plain Hugging Face directory."""
    tiny_model(kind).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
