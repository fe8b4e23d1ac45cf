"""Evaluating a model spread over devices (issue 16): `--device-map` (accelerate) puts what fits no device in CPU
memory and on disk; the numbers are those of the model in one piece, plain and pruned, and bad placements are one
line of error."""

from __future__ import annotations

import gc
import json
import tempfile

import pytest
import torch
from typer.testing import CliRunner

from minillm_core import workflow
from minillm_core.cli import app
from minillm_core.devices import PlacementConfig, input_device
from minillm_core.errors import MiniLLMError
from tests.helpers import save_tiny

runner = CliRunner()
TINY_BUDGET = "cpu=20KB"  # a tiny model's embeddings fit, its layers do not: the rest is read from disk


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A tiny Llama (GQA) and a 30%-pruned copy (uneven widths, so only our loader rebuilds it)."""
    root = tmp_path_factory.mktemp("placement")
    model = save_tiny("llama-gqa", root / "model")
    result = runner.invoke(app, ["prune", "--model", str(model), "--scorer", "magnitude", "--ratio", "0.3",
                                 "--allocation", "global", "--protect", "", "--no-reconstruct", "--out",
                                 str(root / "pruned"), "--json"])
    assert result.exit_code == 0, result.output
    return model, root / "pruned"


@pytest.mark.parametrize("which", [0, 1], ids=["plain", "pruned"])
def test_a_spread_model_computes_what_the_whole_model_does(dirs, which, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the offload folder is made here
    whole = workflow.load(str(dirs[which]), dtype="float32", device="cpu")
    spread = workflow.load(str(dirs[which]), dtype="float32", device="cpu",
                           placement=PlacementConfig("auto", TINY_BUDGET))
    placed = set(map(str, spread.model.hf_device_map.values()))
    assert "disk" in placed and input_device(spread.model) == torch.device("cpu") == spread.device
    assert any(p.is_meta for p in spread.model.parameters())  # offloaded: read from disk when used
    ids = torch.randint(0, 90, (2, 12))
    assert torch.equal(spread.model(ids).logits, whole.model(ids).logits)
    assert [p.name for p in tmp_path.glob("minillm-offload-*")]  # our own folder ...
    del spread
    gc.collect()
    assert not list(tmp_path.glob("minillm-offload-*"))  # ... removed with the model


def test_eval_with_a_device_map_gives_the_same_numbers(dirs, data_dir, tmp_path):
    model, pruned = dirs
    args = ["eval", "--model", str(pruned), "--compare-to", str(model), "--ppl", "wikitext2", "--tasks", "arc_easy",
            "--limit", "3", "--seq-len", "16", "--json"]
    whole = runner.invoke(app, args)
    spread = runner.invoke(app, [*args, "--device-map", "auto", "--max-memory", TINY_BUDGET])
    assert whole.exit_code == 0 and spread.exit_code == 0, spread.output
    assert "disk" in spread.stderr  # where the modules went is said
    a, b = json.loads(whole.stdout), json.loads(spread.stdout)
    assert a["pruned"]["ppl/wikitext2"] == b["pruned"]["ppl/wikitext2"]
    assert a["pruned"]["acc/arc_easy"] == b["pruned"]["acc/arc_easy"]
    assert a["comparison"] == b["comparison"]


@pytest.mark.parametrize("flags, message", [
    (["--device-map", "everywhere"], "everywhere"),
    (["--max-memory", "cpu=1GiB"], "applies with --device-map"),
    (["--device-map", "auto", "--max-memory", "cpu:1GiB"], "DEVICE=SIZE"),
    (["--device-map", "auto", "--max-memory", "cpu=lots"], "DEVICE=SIZE"),
    (["--device-map", "auto", "--max-memory", f"{torch.cuda.device_count()}=1GiB"], "GPU(s); allowed devices"),
    (["--device-map", "auto", "--speed"], "without --device-map"),
    (["--device-map", "auto", "--engine", "llamacpp"], "--engine torch"),
])
def test_bad_placements_are_one_line_errors(dirs, flags, message):
    result = runner.invoke(app, ["eval", "--model", str(dirs[0]), *flags])
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


def test_placement_config_checks_itself():
    assert PlacementConfig("sequential", "cpu=1GiB").memory_budget() == {"cpu": 1 << 30}
    assert PlacementConfig().memory_budget() is None and not PlacementConfig().spread
    with pytest.raises(MiniLLMError, match="allowed: auto, balanced"):
        PlacementConfig("gpu")
