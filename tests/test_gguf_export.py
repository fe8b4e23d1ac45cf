"""GGUF export for llama.cpp: tiny pruned models written, loaded in real llama.cpp (xllamacpp) and compared with
transformers; the rotary permutation on hand-made rows; refusals; the plan option; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from minillm_core.errors import ExportError
from minillm_core.evaluation.llamacpp import LlamaCpp, output_matrix, perplexity_llamacpp
from minillm_core.evaluation.perplexity import perplexity
from minillm_core.gguf_export import GGUFConfig, check_output_file, rope_permute, write_gguf
from minillm_core.modeling import LayerPlanIndices, get_adapter
from minillm_core.surgery import apply_indices
from tests.helpers import char_tokenizer, tiny_model, write_tokenizer_gguf

VOCAB = 96
#: Uneven widths: GQA 4/2 kept, MHA-like 2/2, one KV head left (1/1), FFN widths 128, 64, 96 and 32.
UNEVEN = [((0, 1, 2, 3), (0, 1), range(128)), ((0, 2), (0, 1), range(0, 128, 2)), ((1,), (0,), range(96)),
          ((0, 1, 2, 3), (0, 1), range(32))]


def gguf_llama(tie: bool = True, seed: int = 0, **overrides):
    """A tiny Llama whose widths quantize (hidden 128, head_dim 32, FFN 128), norm gains randomised."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=128, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=4, vocab_size=VOCAB, max_position_embeddings=256,
                         tie_word_embeddings=tie, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def uneven(model, layers=UNEVEN):
    apply_indices(get_adapter(model), [LayerPlanIndices(tuple(h), tuple(kv), tuple(c)) for h, kv, c in layers])
    return model


@pytest.fixture(scope="module")
def vocab_gguf(tmp_path_factory):
    return write_tokenizer_gguf(tmp_path_factory.mktemp("tok") / "tokenizer.gguf", char_tokenizer(), VOCAB)


IDS = [0, *np.random.RandomState(0).randint(2, 49, 47).tolist()]


def llamacpp_logprobs(path, ids=IDS) -> torch.Tensor:
    with LlamaCpp(path, n_ctx=64, embedding=True) as llm:
        hidden = torch.from_numpy(llm.hidden_states(ids))
    return torch.log_softmax(hidden @ output_matrix(path).T, -1)


def torch_logprobs(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)


def test_rope_permute_interleaves_each_heads_halves():
    """HF rotates (x_i, x_{i+d/2}); llama.cpp rotates adjacent pairs: rows [0 1 2 3] of a head become [0 2 1 3]."""
    rows = np.arange(8, dtype=np.float32)[:, None]  # two heads of head_dim 4
    assert rope_permute(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert rope_permute(np.arange(4.0), 1).tolist() == [0, 2, 1, 3]  # a bias permutes like its rows


# Tolerances: f32 differs from PyTorch only by summation order (measured ~4e-4 in log-probability); q8_0 adds
# llama.cpp's 8-bit activations in the matrix products and 8-bit weights (measured ~8e-3).
@pytest.mark.parametrize(("dtype", "tol"), [("f32", 2e-3), ("q8_0", 5e-2)])
def test_uneven_pruned_llama_runs_in_llamacpp_like_transformers(tmp_path, vocab_gguf, dtype, tol):
    model = uneven(gguf_llama())
    result = write_gguf(model, tmp_path / "m.gguf", GGUFConfig(dtype=dtype), vocab_gguf)
    assert result.arch == "deci" and result.fallbacks == []
    matrices = 1 + 4 * 7  # token_embd + q, k, v, o, gate, up, down per layer
    assert result.tensor_types == ({"F32": matrices + 1 + 8} if dtype == "f32" else {"Q8_0": matrices, "F32": 9})
    diff = (llamacpp_logprobs(result.path) - torch_logprobs(model)).abs().max().item()
    assert diff < tol


def test_untied_output_and_uniform_widths_write_plain_llama(tmp_path, vocab_gguf):
    model = uneven(gguf_llama(tie=False), [((0, 1), (0,), range(64))] * 4)  # 2 of 4 heads, 1 of 2 KV heads
    result = write_gguf(model, tmp_path / "u.gguf", GGUFConfig(dtype="f32"), vocab_gguf)
    assert result.arch == "llama"
    import gguf

    assert "output.weight" in {t.name for t in gguf.GGUFReader(result.path).tensors}
    assert (llamacpp_logprobs(result.path) - torch_logprobs(model)).abs().max().item() < 2e-3


def test_ffn_free_layer_with_attention_is_padded_with_zero_channels(tmp_path, vocab_gguf):
    """llama.cpp skips a layer with no FFN channels entirely (its attention too): the export adds 32 zero channels,
    which add exactly nothing."""
    layers = [*UNEVEN[:2], ((0, 1), (0,), ()), UNEVEN[3]]
    model = uneven(gguf_llama(), layers)
    result = write_gguf(model, tmp_path / "p.gguf", GGUFConfig(dtype="f32"), vocab_gguf)
    assert result.padded_layers == [2]
    assert (llamacpp_logprobs(result.path) - torch_logprobs(model)).abs().max().item() < 2e-3


def test_quantized_matrices_that_cannot_be_blocked_fall_back_to_f16(tmp_path, vocab_gguf):
    model = uneven(gguf_llama(), [*UNEVEN[:3], ((0, 1, 2, 3), (0, 1), range(40))])  # FFN 40: not a multiple of 32
    result = write_gguf(model, tmp_path / "f.gguf", GGUFConfig(dtype="q4_0"), vocab_gguf)
    assert result.fallbacks == ["blk.3.ffn_down.weight"]
    assert result.tensor_types["Q8_0"] == 1  # the tied embedding/output matrix stays 8-bit under q4_0
    assert (llamacpp_logprobs(result.path) - torch_logprobs(model)).abs().max().item() < 0.5


def test_perplexity_in_llamacpp_equals_the_pytorch_protocol(tmp_path, vocab_gguf):
    model = uneven(gguf_llama())
    path = write_gguf(model, tmp_path / "m.gguf", GGUFConfig(dtype="f32"), vocab_gguf).path
    tokenizer = char_tokenizer()
    text = "the quick brown fox jumps over the lazy dog. " * 40
    ours = perplexity(model, tokenizer, text, seq_len=32, limit=6)
    theirs = perplexity_llamacpp(path, tokenizer(text, return_tensors="pt").input_ids[0], seq_len=32, limit=6)
    assert theirs.n_tokens == ours.n_tokens == 6 * 31
    assert theirs.ppl == pytest.approx(ours.ppl, rel=1e-3)


def test_greedy_generation_in_llamacpp_matches_transformers(tmp_path, vocab_gguf):
    model = uneven(gguf_llama(seed=3))
    path = write_gguf(model, tmp_path / "g.gguf", GGUFConfig(dtype="f32"), vocab_gguf).path
    prompt = IDS[:8]
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, min_new_tokens=12)
    with LlamaCpp(path, n_ctx=64) as llm:
        out = llm.complete(prompt, 12, ignore_eos=True)
    assert out["tokens"] == ref[0, len(prompt):].tolist()
    assert out["timings"]["predicted_per_second"] > 0


@pytest.mark.parametrize("kind", ["opt", "bloom"])
def test_families_without_a_llamacpp_route_are_refused(tmp_path, vocab_gguf, kind):
    with pytest.raises(ExportError, match=r"no llama\.cpp \(GGUF\) export route; exportable families: llama"):
        write_gguf(tiny_model(kind), tmp_path / "x.gguf", GGUFConfig(), vocab_gguf)
    assert list(tmp_path.iterdir()) == []


def test_refusals_name_the_problem(tmp_path, vocab_gguf):
    scaled = gguf_llama(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(ExportError, match="rope scaling 'linear'"):
        write_gguf(scaled, tmp_path / "a.gguf", GGUFConfig(), vocab_gguf)
    other_vocab = write_tokenizer_gguf(tmp_path / "t.gguf", char_tokenizer(), 80)
    with pytest.raises(ExportError, match="80 tokens but the model's embedding has 96 rows"):
        write_gguf(gguf_llama(), tmp_path / "b.gguf", GGUFConfig(), other_vocab)
    with pytest.raises(ExportError, match="allowed: f32, f16, q8_0, q4_0"):
        GGUFConfig(dtype="q2_k")
    (tmp_path / "exists.gguf").write_bytes(b"keep me")
    with pytest.raises(ExportError, match="exists; choose another name or pass overwrite"):
        check_output_file(tmp_path / "exists.gguf", overwrite=False)
    with pytest.raises(ExportError, match="is not a GGUF file; overwrite only replaces GGUF files"):
        check_output_file(tmp_path / "exists.gguf", overwrite=True)
    with pytest.raises(ExportError, match="is a directory"):
        check_output_file(tmp_path, overwrite=True)
    with pytest.raises(ExportError, match="is not a directory"):
        check_output_file(tmp_path / "exists.gguf" / "m.gguf", overwrite=False)
    assert (tmp_path / "exists.gguf").read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.gguf", "t.gguf"]  # no partial files left


def test_gguf_compatible_plans_round_mlp_widths_to_quantization_blocks(tiny_model_dir):
    from minillm_core import workflow

    loaded = workflow.load(str(tiny_model_dir), device="cpu")  # FFN 80 wide: 8-rounded widths are not 32-multiples
    scores = workflow.score(loaded.model, "magnitude")
    plain = workflow.make_plan(loaded, scores, workflow.PlanConfig(ratio=0.3, protected_layers=()))
    fit = workflow.make_plan(loaded, scores, workflow.PlanConfig(ratio=0.3, protected_layers=(), gguf_compatible=True))
    assert fit.config.round_to == 32
    assert all(s.intermediate % 32 == 0 for s in fit.shapes()) and any(s.intermediate % 32 for s in plain.shapes())
    assert "GGUF (llama.cpp)" in workflow.summary_of(fit, loaded.model).exports_to
    assert any("down projections in f16" in e for e in workflow.summary_of(plain, loaded.model).exports_to)


def test_cli_export_writes_a_gguf_and_refuses_bad_input_before_loading(tmp_path, vocab_gguf):
    from typer.testing import CliRunner

    from minillm_core.cli import app
    from minillm_core.io import save_pruned
    from tests.helpers import char_tokenizer as tok

    model_dir = save_pruned(uneven(gguf_llama()), tok(), tmp_path / "pruned")
    runner = CliRunner()
    out = tmp_path / "out" / "m.gguf"
    ok = runner.invoke(app, ["export", "--model", str(model_dir), "--out", str(out), "--dtype", "q8_0",
                             "--tokenizer-from", str(vocab_gguf), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["arch"] == "deci" and out.is_file()
    again = runner.invoke(app, ["export", "--model", "no/such-model", "--out", str(out)])
    assert again.exit_code == 2 and "exists; choose another name" in again.stderr  # checked before loading
    bad = runner.invoke(app, ["export", "--model", str(model_dir), "--out", str(tmp_path / "x"), "--format", "onnx"])
    assert bad.exit_code == 2 and "error: unknown format 'onnx'; allowed: gguf" in bad.stderr
    lost = runner.invoke(app, ["export", "--model", str(model_dir), "--out", str(tmp_path / "y.gguf")])
    assert lost.exit_code == 2 and "no GGUF tokenizer is known" in lost.stderr


def test_cli_eval_in_llamacpp_measures_both_models_interleaved(tmp_path, vocab_gguf, data_dir):
    import shutil

    from typer.testing import CliRunner

    from minillm_core.cli import app
    from minillm_core.io import save_pruned

    dirs = {}
    for name, model in (("dense", gguf_llama()), ("pruned", uneven(gguf_llama()))):
        dirs[name] = save_pruned(model, char_tokenizer(), tmp_path / name)
        shutil.copy(vocab_gguf, dirs[name] / "tokenizer.gguf")
    args = ["eval", "--model", str(dirs["pruned"]), "--compare-to", str(dirs["dense"]), "--engine", "llamacpp",
            "--limit", "2", "--seq-len", "16", "--speed-repeats", "2", "--decode-tokens", "8", "--gguf-dtype", "f32"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    for label in ("pruned", "original"):
        r = payload["models"][label]
        assert r["llamacpp/ppl/wikitext2"] > 1 and r["llamacpp/windows/wikitext2"] == 2
        assert len(r["llamacpp/decode_runs/t1"]) == 2 and r["llamacpp/decode_tps/t1"] > 0
    assert payload["models"]["pruned"]["llamacpp/file_mb"] < payload["models"]["original"]["llamacpp/file_mb"]
    assert payload["speedup"]["t1"] > 0
    bad = CliRunner().invoke(app, [*args, "--engine", "onnxruntime"])
    assert bad.exit_code == 2 and "error: unknown engine 'onnxruntime'; allowed: torch, llamacpp" in bad.stderr


@pytest.mark.slow
def test_export_killed_at_any_moment_leaves_no_half_file(tmp_path, vocab_gguf):
    """SIGKILL `minillm export --overwrite` at points spread over its run: the GGUF file is the previous whole one
    or the new whole one (gguf's reader opens it), and the next export removes the dead writer's temporary file."""
    import sys

    import gguf

    from minillm_core.io import save_pruned
    from tests.helpers import kill_at_points

    model_dir = save_pruned(uneven(gguf_llama()), char_tokenizer(), tmp_path / "pruned")
    out = tmp_path / "m.gguf"
    cmd = [sys.executable, "-m", "minillm_core.cli", "export", "--model", str(model_dir), "--out", str(out),
           "--dtype", "q8_0", "--tokenizer-from", str(vocab_gguf), "--overwrite"]

    def check() -> None:
        assert out.is_file()  # written whole by the timing run, replaced only whole
        gguf.GGUFReader(out)

    kill_at_points(cmd, (0.6, 0.85, 0.93, 0.98), check)
    gguf.GGUFReader(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "pruned"]
