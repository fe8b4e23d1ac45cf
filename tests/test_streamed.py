"""Out-of-core pruning (issue 16): one decoder layer at a time from the safetensors files, the same result as the
in-memory pipeline tensor for tensor, every family, sharded output that reloads, the refusals, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from minillm_core import workflow
from minillm_core.allocation import build_plan
from minillm_core.cli import app
from minillm_core.errors import MiniLLMError
from minillm_core.io import load_pruned
from minillm_core.scoring import GroupScores
from minillm_core.streamed import INDEX_FILE, prune_streamed
from minillm_core.workflow import CalibrationConfig, PlanConfig, ReconstructConfig
from tests.helpers import save_tiny_model_dir

CALIB = CalibrationConfig(n_samples=8, seq_len=16)


def in_memory(model_dir, plan_config, data_dir):
    """The in-memory default pipeline with the same widths: load, prune and re-fit in place (units by OBS)."""
    loaded = workflow.load(str(model_dir), dtype="float32", device="cpu")
    geometry = workflow.geometry_of(loaded.model)
    zeros = GroupScores("obs", [torch.zeros(s.num_heads) for s in geometry.layers],
                        [torch.zeros(s.intermediate) for s in geometry.layers])
    plan = build_plan(geometry, zeros, plan_config, model_name=str(model_dir))
    rows = workflow.calibrate(loaded, CALIB, data_dir)
    pruned, plan, _ = workflow.prune_and_reconstruct(loaded.model, plan, rows, ReconstructConfig(), inplace=True)
    return pruned, plan


@pytest.mark.parametrize("kind", ["llama-gqa", "qwen2", "opt", "bloom"])
def test_out_of_core_equals_in_memory_tensor_for_tensor(kind, tmp_path, fixture_mirror):
    source = save_tiny_model_dir(tmp_path / kind, kind)
    config = PlanConfig(ratio=0.3, protected_layers=())
    plan, report = prune_streamed(source, tmp_path / "out", config, CALIB, data_dir=fixture_mirror)
    expected, expected_plan = in_memory(source, config, fixture_mirror)
    got, _ = load_pruned(tmp_path / "out", dtype="float32", device="cpu")
    want = expected.state_dict()
    assert set(got.state_dict()) == set(want)
    for name, tensor in got.state_dict().items():
        assert torch.equal(tensor, want[name]), name
    assert plan.layers == expected_plan.layers
    assert report["params_after"] == plan.predicted_params < report["params_before"]
    assert plan.provenance["out_of_core"] is True
    index = json.loads((tmp_path / "out" / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) == report["shards"] == 5  # 4 layers + the rest
    ids = torch.randint(0, 90, (2, 12))
    assert torch.equal(got(ids).logits, expected(ids).logits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the device machine)")
def test_out_of_core_on_cuda_keeps_one_layer_on_the_gpu(tmp_path, fixture_mirror, monkeypatch):
    """On CUDA the layer being processed is on the GPU and the rest is not (each layer, when read, finds no other
    on the GPU); the result matches the CPU pass up to float rounding."""
    import minillm_core.streamed as streamed
    from minillm_core.modeling import get_adapter

    seen, read = [], streamed._load_params

    def spy(model, module, ckpt, dtype, device):
        seen.append(sum(any(p.device.type == "cuda" for p in layer.parameters())
                        for layer in get_adapter(model).layers()))
        read(model, module, ckpt, dtype, device)
        assert all(p.device.type == "cuda" for p in module.parameters())

    monkeypatch.setattr(streamed, "_load_params", spy)
    source = save_tiny_model_dir(tmp_path / "m", "llama-gqa")
    config = PlanConfig(ratio=0.3, protected_layers=())
    _, report = prune_streamed(source, tmp_path / "gpu", config, CALIB, data_dir=fixture_mirror, device="cuda")
    assert report["device"].startswith("cuda") and seen == [0] * 4
    prune_streamed(source, tmp_path / "cpu", config, CALIB, data_dir=fixture_mirror, device="cpu")
    gpu, _ = load_pruned(tmp_path / "gpu", dtype="float32", device="cpu")
    cpu, _ = load_pruned(tmp_path / "cpu", dtype="float32", device="cpu")
    ids = torch.randint(0, 90, (2, 12))
    assert torch.allclose(gpu(ids).logits, cpu(ids).logits, atol=1e-3)


def test_uniform_result_loads_with_plain_from_pretrained(tiny_model_dir, tmp_path, fixture_mirror):
    from transformers import AutoModelForCausalLM

    config = PlanConfig(ratio=0.3, protected_layers=(), target="channels")
    _, report = prune_streamed(tiny_model_dir, tmp_path / "out", config, CALIB, data_dir=fixture_mirror)
    assert report["loads_with_from_pretrained"]
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # reads the sharded index
    mine, _ = load_pruned(tmp_path / "out", dtype="float32", device="cpu")
    ids = torch.randint(0, 90, (1, 10))
    assert torch.allclose(plain(ids).logits, mine(ids).logits)


def test_refusals_before_any_work(tiny_model_dir, tmp_path, fixture_mirror):
    for config, recon, calib, match in (
        (PlanConfig(allocation="global"), ReconstructConfig(), CALIB, "uniform, schedule"),
        (PlanConfig(), ReconstructConfig(enabled=False), CALIB, "re-fit on"),
        (PlanConfig(), ReconstructConfig(select="plan"), CALIB, "recon-select obs"),
        (PlanConfig(), ReconstructConfig(), CalibrationConfig(source="self"), "self"),
    ):
        with pytest.raises(MiniLLMError, match=match):
            prune_streamed(tiny_model_dir, tmp_path / "out", config, calib, recon, data_dir=fixture_mirror)
    with pytest.raises(MiniLLMError, match=r"config\.json"):
        prune_streamed(tmp_path, tmp_path / "out", PlanConfig(), CALIB, data_dir=fixture_mirror)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    with pytest.raises(MiniLLMError, match="not empty"):
        prune_streamed(tiny_model_dir, tmp_path / "taken", PlanConfig(), CALIB, data_dir=fixture_mirror)
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    if not torch.cuda.is_available():
        with pytest.raises(MiniLLMError, match="CUDA is not available"):
            prune_streamed(tiny_model_dir, tmp_path / "out", PlanConfig(), CALIB, data_dir=fixture_mirror,
                           device="cuda")


def test_cli_prune_out_of_core(tiny_model_dir, tmp_path, fixture_mirror):
    runner = CliRunner()
    args = ["prune", "--model", str(tiny_model_dir), "--ratio", "0.3", "--protect", "", "--out",
            str(tmp_path / "out"), "--out-of-core", "--n-samples", "8", "--calib-seq-len", "16", "--data-dir",
            str(fixture_mirror), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["out_of_core"] and payload["params_after"] < payload["params_before"]
    loaded = workflow.load(str(tmp_path / "out"), dtype="float32", device="cpu")
    assert workflow.count_params(loaded.model) == payload["params_after"]
    bad = runner.invoke(app, [*args[:-1], "--allocation", "global", "--overwrite"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and "uniform, schedule" in bad.stderr
