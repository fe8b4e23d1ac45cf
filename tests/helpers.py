"""Plain helpers for the tests: tiny random models and tokenizers built in-process, and a tiny job spec.

Fixtures live in `tests/conftest.py`; these are the functions tests call directly (no downloads anywhere).
"""

from __future__ import annotations

from pathlib import Path

import torch

# The character tokenizer's alphabet (+ BOS + unk, well under the tiny vocab of 96); other characters map to unk.
CHAR_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 \n.,'=-@()"


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
    """A tiny model + word-level tokenizer saved as a plain Hugging Face directory."""
    tiny_model(kind).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def char_tokenizer():
    """One id per character of `CHAR_ALPHABET` (BOS=0, unk=1), so any English text tokenizes without a download."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<unk>": 1} | {ch: i + 2 for i, ch in enumerate(CHAR_ALPHABET)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", unk_token="<unk>", eos_token="<s>")


def save_tiny_model_dir(path: Path, kind: str = "llama-gqa") -> Path:
    """A loadable model directory (config, safetensors, character tokenizer) of a tiny random model."""
    tiny_model(kind).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


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

    evaluation = {"perplexity": ("wikitext2",), "limit": 2, "seq_len": 16, "measure_speed": True}
    evaluation |= {k: kw.pop(k) for k in ("perplexity", "tasks", "limit", "seq_len", "measure_speed") if k in kw}
    base = {"model": str(model_dir), "plan": tiny_plan(model_dir), "device": "cpu",
            "evaluation": eval_config(**evaluation)}
    return RunSpec(**(base | kw))


def _byte_level(text: str) -> str:
    """GPT-2's byte-to-unicode spelling of `text` (how llama.cpp's `gpt2` vocabularies store tokens)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return "".join(table[b] for b in text.encode())


def write_tokenizer_gguf(path: Path, tokenizer, vocab_size: int) -> Path:
    """A GGUF file holding only the `tokenizer.*` fields of a word-level test tokenizer (padded to `vocab_size` with
    unused tokens), as `minillm export` copies them: what a real model's own GGUF would provide."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    special = set(tokenizer.all_special_tokens)
    tokens, types = [], []
    for i in range(vocab_size):
        t = by_id.get(i)
        tokens.append(f"<unused_{i}>" if t is None else t if t in special else _byte_level(t))
        types.append(gguf.TokenType.UNUSED if t is None else gguf.TokenType.CONTROL if t in special
                     else gguf.TokenType.NORMAL)
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{tokens[-2]} {tokens[-1]}"])  # llama.cpp needs a merges list; this one never applies
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def kill_at_points(cmd: list[str], fractions, check, cwd=None) -> None:
    """Run `cmd` once to time it, then SIGKILL it at each fraction of that time and call `check()` after every kill
    (what a killed run must leave behind); finally run it whole again. The kill campaign of issue 14."""
    import signal
    import subprocess
    import time

    t0 = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, cwd=cwd)
    whole = time.monotonic() - t0
    for fraction in fractions:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
        time.sleep(whole * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check()
    subprocess.run(cmd, check=True, capture_output=True, cwd=cwd)
