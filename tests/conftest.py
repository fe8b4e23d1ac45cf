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


# --- runs: a loadable tiny model directory, a private runs root, a quick RunSpec ---------------------------------

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 \n.,'=-@()"  # + BOS + unk, well under the tiny vocab of 96


def char_tokenizer():
    """A character-level tokenizer (every character of the offline text sets is in the vocabulary)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<unk>": 1} | {ch: i + 2 for i, ch in enumerate(ALPHABET)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", unk_token="<unk>", eos_token="<s>")


def save_tiny_model_dir(path: Path, kind: str = "llama-gqa") -> Path:
    """A loadable model directory (config, safetensors, tokenizer) of a tiny random model."""
    tiny_model(kind).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    """A private runs root (`MINILLM_RUNS_DIR`), with the offline data mirror exported for the workers."""
    from minillm_core.runs import RUNS_DIR_ENV

    root = tmp_path / "runs"
    monkeypatch.setenv(RUNS_DIR_ENV, str(root))
    data = Path(os.environ.get("MINILLM_DATA_DIR", SHARED_DATA))
    if not data.is_dir():
        pytest.skip(f"offline data mirror not found at {data}")
    monkeypatch.setenv("MINILLM_DATA_DIR", str(data))
    return root


def tiny_plan(model_dir: Path, ratio: float = 0.2):
    """A magnitude `PruningPlan` of the model in `model_dir` (no calibration)."""
    from minillm_core import workflow

    loaded = workflow.load(str(model_dir), device="cpu")
    scores = workflow.score(loaded.model, "magnitude")
    return workflow.make_plan(loaded.model, scores, workflow.PlanConfig(ratio=ratio, protected_layers=()),
                              str(model_dir))


def spec_for(model_dir: Path, **kw):
    """A quick `RunSpec` for `model_dir` (2 windows of 16 tokens, CPU); `kw` overrides its fields and the
    evaluation's settings (perplexity, tasks, limit, seq_len, measure_speed)."""
    from minillm_core.runs import RunSpec, eval_config

    evaluation = {"perplexity": ("wikitext2",), "limit": 2, "seq_len": 16}
    evaluation |= {k: kw.pop(k) for k in ("perplexity", "tasks", "limit", "seq_len", "measure_speed") if k in kw}
    base = {"model": str(model_dir), "plan": tiny_plan(model_dir), "device": "cpu",
            "evaluation": eval_config(**evaluation)}
    return RunSpec(**(base | kw))
