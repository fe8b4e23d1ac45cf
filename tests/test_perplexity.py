"""Tests for minillm_core.evaluation.perplexity against a hand computation on a tiny random Llama.

The model (vocab 64) and a character-level HF tokenizer are built in-process; nothing is downloaded.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from minillm_core.data import perplexity_text
from minillm_core.errors import DataError
from minillm_core.evaluation.compare import compare_models
from minillm_core.evaluation.perplexity import (
    PerplexityResult,
    perplexity,
    perplexity_on,
    perplexity_pair,
    token_windows,
    tokenize_prefix,
)

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 \n.,'<>"  # 44 characters + BOS + unk < vocab_size 64
TEXT = "the quick brown fox jumps over the lazy dog.\n\n" * 6  # 276 characters -> 277 ids with BOS


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: BOS=0 prepended like Llama's, unk=1, then one id per ALPHABET character."""
    vocab = {"<s>": 0, "<unk>": 1} | {ch: i + 2 for i, ch in enumerate(ALPHABET)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


def hand_perplexity(model, ids: torch.Tensor, seq_len: int, n_windows: int) -> tuple[float, float]:
    """Window by window, with nothing shared with the library code: (ppl, nll_sum)."""
    nll = 0.0
    with torch.no_grad():
        for w in range(n_windows):
            window = ids[w * seq_len : (w + 1) * seq_len]
            logits = model(window.unsqueeze(0)).logits[0]
            nll += F.cross_entropy(logits[:-1], window[1:], reduction="sum").item()
    return math.exp(nll / (n_windows * (seq_len - 1))), nll


def test_matches_the_hand_computation_and_drops_the_partial_window(model, tokenizer):
    ids = torch.tensor(tokenizer(TEXT)["input_ids"])
    assert ids.numel() == 277 and ids[0] == 0  # BOS once, at the start of the whole text
    result = perplexity(model, tokenizer, TEXT, seq_len=32, batch_size=4)
    assert result.n_windows == 277 // 32 == 8
    assert result.n_tokens == 8 * 31 and result.seq_len == 32
    expected_ppl, expected_nll = hand_perplexity(model, ids, 32, 8)
    assert math.isclose(result.nll_sum, expected_nll, rel_tol=1e-5)
    assert math.isclose(result.ppl, expected_ppl, rel_tol=1e-5)
    # The 21 tokens after the last full window never reach the model.
    assert perplexity(model, tokenizer, TEXT[:-21] + "zzzzzzzzzzzzzzzzzzzzz", seq_len=32) == result


def test_limit_keeps_the_first_windows(model, tokenizer):
    ids = torch.tensor(tokenizer(TEXT)["input_ids"])
    result = perplexity(model, tokenizer, TEXT, seq_len=32, batch_size=4, limit=3)
    assert result.n_windows == 3 and result.n_tokens == 3 * 31
    assert math.isclose(result.ppl, hand_perplexity(model, ids, 32, 3)[0], rel_tol=1e-5)
    assert perplexity(model, tokenizer, TEXT, seq_len=32, limit=100).n_windows == 8


def test_batch_size_does_not_change_the_result(model, tokenizer):
    results = [perplexity(model, tokenizer, TEXT, seq_len=16, batch_size=b).ppl for b in (1, 3, 8, 64)]
    assert all(math.isclose(r, results[0], rel_tol=1e-5) for r in results)


def test_progress_after_each_batch(model, tokenizer):
    calls = []
    perplexity(model, tokenizer, TEXT, seq_len=32, batch_size=3, progress=lambda *a: calls.append(a))
    assert calls == [(3, 8, "perplexity"), (6, 8, "perplexity"), (8, 8, "perplexity")]


def test_training_mode_is_restored(model, tokenizer):
    model.train()
    try:
        perplexity(model, tokenizer, TEXT, seq_len=32, limit=1)
        assert model.training
    finally:
        model.eval()


def test_text_shorter_than_one_window(model, tokenizer):
    with pytest.raises(DataError, match="the text has 10 tokens, fewer than one window of seq_len=32"):
        perplexity(model, tokenizer, "too short", seq_len=32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq_len": 1}, "seq_len must be an integer >= 2"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"limit": 0}, "limit must be None"),
    ],
)
def test_argument_errors(model, tokenizer, kwargs, message):
    with pytest.raises(DataError, match=message):
        perplexity(model, tokenizer, TEXT, **kwargs)


def test_token_windows_shapes():
    windows = token_windows(torch.arange(10), 4)
    assert windows.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert token_windows(torch.arange(10), 4, limit=1).shape == (1, 4)


def test_result_to_dict():
    result = PerplexityResult(ppl=2.0, nll_sum=1.5, n_tokens=3, n_windows=1, seq_len=4)
    assert result.to_dict() == {"ppl": 2.0, "nll_sum": 1.5, "n_tokens": 3, "n_windows": 1, "seq_len": 4}


def test_perplexity_on_a_registered_dataset(model, tokenizer, data_dir):
    result = perplexity_on(model, tokenizer, "ptb", seq_len=64, batch_size=4, limit=4)
    expected = perplexity(model, tokenizer, perplexity_text("ptb"), seq_len=64, batch_size=4, limit=4)
    assert result == expected and result.n_windows == 4


def test_a_limited_evaluation_tokenizes_a_prefix_with_the_same_ids(tokenizer, data_dir):
    """`tokenize_prefix` returns the first tokens of the whole text exactly (the cut only moves tokens past the
    margin), grows the prefix when it is too short, and tokenizes everything without a limit."""
    text = perplexity_text("wikitext2", data_dir)
    whole = tokenizer(text, return_tensors="pt").input_ids[0]
    for needed in (16, 500, 5000):
        ids = tokenize_prefix(tokenizer, text, needed)
        assert needed <= ids.numel() < whole.numel() and torch.equal(ids[:needed], whole[:needed])
    assert torch.equal(tokenize_prefix(tokenizer, text, None), whole)
    assert torch.equal(tokenize_prefix(tokenizer, "a short text", 4), tokenizer("a short text", return_tensors="pt")
                       .input_ids[0])


class _Counting(torch.nn.Module):
    """A model wrapper that records how many windows each forward pass scored."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.rows = inner, []

    def forward(self, **kwargs):
        self.rows.append(kwargs["input_ids"].shape[0])
        return self.inner(**kwargs)

    def parameters(self, recurse=True):
        return self.inner.parameters(recurse)

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()


@pytest.fixture(scope="module")
def other_model() -> LlamaForCausalLM:
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


def test_a_paired_pass_equals_separate_perplexities_and_kl(model, other_model, tokenizer):
    pair = perplexity_pair(model, other_model, tokenizer, TEXT, seq_len=32, batch_size=3, compare_windows=5)
    assert pair.original == perplexity(model, tokenizer, TEXT, seq_len=32, batch_size=3)
    assert pair.pruned == perplexity(other_model, tokenizer, TEXT, seq_len=32, batch_size=3)
    windows = token_windows(torch.tensor(tokenizer(TEXT)["input_ids"]), 32, 5)
    separate = compare_models(model, other_model, windows, batch_size=2)
    assert pair.agreement.n_tokens == separate.n_tokens == 5 * 32
    assert math.isclose(pair.agreement.kl, separate.kl, rel_tol=1e-6)
    assert pair.agreement.agreement == separate.agreement


def test_a_paired_pass_runs_each_model_once_per_window(model, other_model, tokenizer):
    original, pruned = _Counting(model), _Counting(other_model)
    perplexity_pair(original, pruned, tokenizer, TEXT, seq_len=32, batch_size=3, compare_windows=5)
    assert original.rows == pruned.rows == [3, 3, 2]
    original.rows, pruned.rows = [], []  # the original's perplexity known: it runs on the compared windows only
    pair = perplexity_pair(original, pruned, tokenizer, TEXT, seq_len=32, batch_size=3, compare_windows=5,
                           score_original=False)
    assert pair.original is None and pair.agreement.n_tokens == 5 * 32
    assert pruned.rows == [3, 3, 2] and original.rows == [3, 2]
    with pytest.raises(DataError, match="compare_windows"):
        perplexity_pair(model, other_model, tokenizer, TEXT, seq_len=32, compare_windows=0)
