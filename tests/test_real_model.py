"""The bundled SmolLM2-135M end to end: GGUF -> cache, prune 20%, exact parameter count, save, reload, perplexity."""

from __future__ import annotations

import logging

import pytest
import torch

from minillm_core.data import perplexity_text
from minillm_core.evaluation.perplexity import perplexity_on
from minillm_core.io import load_pruned, save_pruned
from minillm_core.loading import load_model
from minillm_core.planning import PlanConfig
from minillm_core.workflow import count_params, score
from minillm_core.workflow import make_plan as plan
from minillm_core.workflow import prune as apply_plan

pytestmark = [pytest.mark.real_model, pytest.mark.slow]


@pytest.fixture(scope="module")
def smollm():
    pytest.importorskip("gguf")
    return load_model("smollm2-135m", device="cpu")


def test_bundled_model_geometry(smollm):
    cfg = smollm.model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        "llama", 30, 9, 3)
    assert count_params(smollm.model) == 134_515_008


def test_the_fixture_mirror_is_big_enough_for_smollm2(smollm, fixture_mirror, caplog):
    """A fresh clone runs on the fixture mirror: the default calibration (32 x 128 SmolLM2 tokens) comes from whole
    C4-style documents, and both perplexity benchmarks give well over the windows the tests evaluate."""
    from minillm_core.calibration import CalibrationConfig, build_calibration
    from minillm_core.cli.prune import PRUNE_CALIBRATION

    with caplog.at_level(logging.INFO, logger="minillm_core.calibration"):
        batch = build_calibration(smollm.tokenizer, CalibrationConfig(), data_dir=fixture_mirror)
    assert batch.shape == (32, 128) and "32 windows from documents" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="minillm_core.calibration"):
        batch = build_calibration(smollm.tokenizer, PRUNE_CALIBRATION, data_dir=fixture_mirror)
    assert batch.shape == (128, 128) and "128 windows from documents" in caplog.text  # minillm prune's default
    for name in ("wikitext2", "ptb"):
        assert len(smollm.tokenizer(perplexity_text(name, fixture_mirror)).input_ids) >= 64 * 128, name


def test_prune_20_percent_save_reload_and_evaluate(smollm, tmp_path, data_dir):
    p = plan(smollm.model, score(smollm.model, "magnitude"), PlanConfig(ratio=0.2), model_name="smollm2-135m")
    pruned = apply_plan(smollm.model, p)
    assert count_params(pruned) == p.predicted_params
    assert abs(p.removed_fraction - 0.2) < 0.005
    assert count_params(smollm.model) == 134_515_008  # the original is untouched
    out = save_pruned(pruned, smollm.tokenizer, tmp_path / "pruned", plan=p)
    reloaded, tokenizer = load_pruned(out, device="cpu")
    ids = smollm.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, pruned(ids).logits)
    dense = perplexity_on(smollm.model, smollm.tokenizer, "wikitext2", limit=4)
    small = perplexity_on(reloaded, tokenizer, "wikitext2", limit=4)
    assert 10 < dense.ppl < 200 and dense.n_windows == 4
    assert small.ppl > dense.ppl  # removing 20% without recovery costs quality


def test_minillm_prune_refits_by_default_and_beats_the_plain_cut(smollm, tmp_path, data_dir):
    """The default pipeline (re-fit with OBS re-selection, default calibration) on the bundled model, through the
    CLI: it reloads, it beats the same units simply cut, and its GGUF runs in llama.cpp with the same greedy text."""
    import json

    from typer.testing import CliRunner

    from minillm_core.cli import app
    from minillm_core.planning import PruningPlan

    out = tmp_path / "p20"
    result = CliRunner().invoke(app, ["prune", "--model", "smollm2-135m", "--ratio", "0.2", "--out", str(out),
                                      "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["reconstruction"]
    assert report["select"] == "obs" and report["projections"]
    refitted, tokenizer = load_pruned(out, device="cpu")
    saved = PruningPlan.load(out / "pruning_plan.json")  # the units actually kept
    cut = apply_plan(smollm.model, saved)
    assert count_params(refitted) == count_params(cut) == saved.predicted_params
    plain = perplexity_on(cut, smollm.tokenizer, "wikitext2", limit=4)
    better = perplexity_on(refitted, tokenizer, "wikitext2", limit=4)
    assert better.ppl < plain.ppl
    # ... and it runs in llama.cpp: exported with its per-layer widths, the same greedy tokens as transformers
    from minillm_core.evaluation.llamacpp import LlamaCpp
    from minillm_core.workflow import GGUFConfig, export_gguf, load

    gguf = export_gguf(load(str(out), device="cpu"), tmp_path / "p20.gguf", GGUFConfig(dtype="f32"))
    assert gguf.arch == "deci" and gguf.tokenizer_source.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = refitted.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    with LlamaCpp(gguf.path, n_ctx=64) as llm:
        assert llm.complete(ids[0].tolist(), 16, ignore_eos=True)["tokens"] == ref[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("estimator", ["spsa", "gates"])
def test_forward_only_minillm_scoring_leaves_weights_bit_identical(smollm, estimator, data_dir):
    from minillm_core.calibration import CalibrationConfig, build_calibration

    calibration = build_calibration(smollm.tokenizer, CalibrationConfig("wikitext2", n_samples=2, seq_len=32))
    before = {k: v.clone() for k, v in smollm.model.state_dict().items()}
    scores = score(smollm.model, "minillm", calibration, estimator=estimator, n_probes=1)
    assert all(torch.equal(before[k], v) for k, v in smollm.model.state_dict().items())
    p = plan(smollm.model, scores, PlanConfig(ratio=0.2))
    assert count_params(apply_plan(smollm.model, p)) == p.predicted_params
    assert all(torch.isfinite(h).all() for h in scores.heads)


def test_layer_streamed_exact_fms_equals_full_backprop_on_smollm2(smollm, data_dir):
    """30 layers in segments of 5: the streamed exact gradient gives the scores full backprop gives."""
    from minillm_core.calibration import CalibrationConfig, build_calibration

    calibration = build_calibration(smollm.tokenizer, CalibrationConfig("wikitext2", n_samples=3, seq_len=32))
    streamed = score(smollm.model, "minillm", calibration, estimator="exact-layerwise", batch_size=2)
    full = score(smollm.model, "minillm", calibration, estimator="exact-backprop", batch_size=2)
    for a, b in zip(streamed.heads + streamed.channels, full.heads + full.channels, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))
    assert all(p.grad is None for p in smollm.model.parameters())


def test_smollm2_tokenizes_a_limited_evaluation_prefix_exactly(smollm, data_dir):
    """The bundled tokenizer (byte-level BPE) gives the same first tokens on a prefix as on the whole test set."""
    from minillm_core.data import perplexity_text
    from minillm_core.evaluation.perplexity import tokenize_prefix

    for name in ("wikitext2", "ptb"):
        text = perplexity_text(name, data_dir)
        whole = smollm.tokenizer(text, return_tensors="pt").input_ids[0]
        for needed in (128, 16 * 128, 40 * 128):
            assert torch.equal(tokenize_prefix(smollm.tokenizer, text, needed)[:needed], whole[:needed])


def test_a_short_kd_run_lowers_perplexity_of_the_pruned_smollm2(smollm, tmp_path, data_dir):
    """Distillation from the unpruned SmolLM2 (LoRA, forward KL) on c4 rows lowers the WikiText-2 test perplexity of
    a 20% magnitude cut, on windows it never trained on, and leaves both models as they were."""
    from minillm_core.evaluation.suite import EvalConfig
    from minillm_core.recovery import RecoveryConfig, recover

    p = plan(smollm.model, score(smollm.model, "magnitude"), PlanConfig(ratio=0.2), model_name="smollm2-135m")
    pruned = apply_plan(smollm.model, p)
    weights = {n: t.clone() for n, t in pruned.state_dict().items()}
    teacher = {n: t.double().sum().item() for n, t in smollm.model.state_dict().items()}  # its names and sums
    cfg = RecoveryConfig(method="kd", data="c4", n_samples=32, max_length=64, batch_size=4, max_steps=8,
                         learning_rate=1e-3, warmup_steps=0, dropout=0.0)
    result = recover(pruned, smollm.tokenizer, cfg, out_dir=tmp_path / "kd", plan=p, teacher=smollm.model,
                     evaluation=EvalConfig(perplexity=("wikitext2",), limit=4))
    assert result.steps == 8 and result.record["method"] == "kd"
    assert result.after["ppl/wikitext2"] < 0.9 * result.before["ppl/wikitext2"]
    assert all(torch.equal(t, pruned.state_dict()[n]) for n, t in weights.items())
    assert teacher == {n: t.double().sum().item() for n, t in smollm.model.state_dict().items()}
    reloaded, _ = load_pruned(tmp_path / "kd", device="cpu")  # saved merged, with its plan
    assert count_params(reloaded) == p.predicted_params
