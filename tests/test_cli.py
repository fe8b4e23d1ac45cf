"""The CLI end to end on a tiny model: plan, prune, eval, info, scorers, and errors as one-line messages."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from minillm_core.cli import app
from minillm_core.io import MANIFEST
from minillm_core.planning import PruningPlan
from tests.helpers import save_tiny

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny("llama-gqa", tmp_path_factory.mktemp("tiny") / "model")


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_plan_json_and_plan_file(model_dir, tmp_path):
    out = _json(runner.invoke(app, ["plan", "--model", str(model_dir), "--scorer", "magnitude", "--ratio", "0.2",
                                    "--protect", "", "--out", str(tmp_path / "plan.json"), "--json",
                                    "--device", "cpu"]))
    assert 0.15 < out["summary"]["removed_fraction"] < 0.25
    assert PruningPlan.load(tmp_path / "plan.json").config.ratio == 0.2


def test_prune_then_eval(model_dir, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"w{i % 90}" for i in range(2000)))
    pruned = tmp_path / "pruned"
    out = _json(runner.invoke(app, ["prune", "--model", str(model_dir), "--scorer", "random", "--ratio", "0.3",
                                    "--allocation", "global", "--protect", "0", "--out", str(pruned), "--json",
                                    "--calib-file", str(text), "--n-samples", "4", "--calib-seq-len", "16"]))
    assert out["params_after"] < out["params_before"] and (pruned / MANIFEST).is_file()
    refits = out["reconstruction"]["projections"]  # reconstruction is on by default
    assert refits and all(r["error_after"] <= r["error_before"] + 1e-6 for r in refits)
    replay = _json(runner.invoke(app, ["prune", "--model", str(model_dir), "--plan", str(pruned / "pruning_plan.json"),
                                       "--out", str(tmp_path / "again"), "--json", "--no-reconstruct"]))
    assert replay["reconstruction"] is None
    assert replay["params_after"] == out["params_after"]
    ev = _json(runner.invoke(app, ["eval", "--model", str(pruned), "--text", str(text), "--seq-len", "16",
                                   "--limit", "5", "--json", "--out", str(tmp_path / "m.json")]))
    assert ev["perplexity"]["text"]["n_windows"] == 5 and ev["perplexity"]["text"]["ppl"] > 1
    assert json.loads((tmp_path / "m.json").read_text()) == ev


def test_info_and_scorers(model_dir):
    info = _json(runner.invoke(app, ["info", "--model", str(model_dir), "--json"]))
    assert (info["layers"], info["heads"], info["kv_heads"]) == (4, 6, 2)
    scorers = _json(runner.invoke(app, ["scorers", "--json"]))
    assert scorers["magnitude"]["needs"] == ["weights"]
    assert (scorers["flap"]["engine"], scorers["flap"]["forward_only"]) == ("activations", True)
    assert (scorers["taylor"]["engine"], scorers["taylor"]["forward_only"]) == ("full backprop", False)
    assert scorers["minillm"]["options"]["estimator"] in ("spsa", "gates", "exact-layerwise")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune", "--model", "./nowhere", "--out", "x"], "error: model path ./nowhere does not exist"),
        (["plan", "--ratio", "1.5"], "error: ratio must be a fraction of parameters in (0, 1), got 1.5"),
        (["plan", "--allocation", "best"], "error: unknown allocation 'best'; allowed: uniform, global"),
        (["plan", "--protect", "a,b"], "error: --protect must be comma-separated integers"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_unknown_scorer(model_dir):
    result = runner.invoke(app, ["plan", "--model", str(model_dir), "--scorer", "psychic"])
    assert result.exit_code == 2 and "unknown scorer 'psychic'; supported:" in result.stderr


def test_prune_refuses_non_empty_out_before_loading(tmp_path):
    (tmp_path / "f").write_text("x")
    result = runner.invoke(app, ["prune", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not empty" in result.stderr and "loading" not in result.stderr
    result = runner.invoke(app, ["prune", "--out", str(tmp_path), "--overwrite"])  # not a folder minillm wrote
    assert result.exit_code == 2 and "holds files minillm did not write" in result.stderr
    assert "loading" not in result.stderr and (tmp_path / "f").read_text() == "x"


def test_recover_trains_saves_and_reports(model_dir, tmp_path, data_dir):
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(" ".join(f"w{(i * 7 + j) % 90}" for j in range(40)) for i in range(20)))
    pruned = tmp_path / "pruned"
    _json(runner.invoke(app, ["prune", "--model", str(model_dir), "--scorer", "magnitude", "--ratio", "0.3",
                              "--protect", "",
                              "--out", str(pruned), "--json"]))
    out = _json(runner.invoke(app, ["recover", "--model", str(pruned), "--out", str(tmp_path / "rec"), "--data",
                                    str(text), "--max-steps", "6", "--batch-size", "2", "--max-length", "32",
                                    "--limit", "2", "--json"]))
    assert out["steps"] == 6 and not out["stopped"]
    assert "ppl/wikitext2" in out["before"] and "ppl/wikitext2" in out["after"]
    assert (tmp_path / "rec" / "recovery.json").is_file() and (tmp_path / "rec" / MANIFEST).is_file()
    kd = _json(runner.invoke(app, ["recover", "--model", str(pruned), "--out", str(tmp_path / "kd"), "--data",
                                   str(text), "--max-steps", "4", "--batch-size", "2", "--max-length", "32",
                                   "--limit", "2", "--method", "kd", "--json"]))  # teacher: the plan's model
    assert kd["steps"] == 4 and json.loads((tmp_path / "kd" / "recovery.json").read_text())["method"] == "kd"
    cached = _json(runner.invoke(app, ["recover", "--model", str(pruned), "--out", str(tmp_path / "kd-top"), "--data",
                                       str(text), "--max-steps", "4", "--batch-size", "2", "--max-length", "32",
                                       "--limit", "2", "--method", "kd", "--kd-top-k", "8", "--json"]))
    record = json.loads((tmp_path / "kd-top" / "recovery.json").read_text())
    assert cached["steps"] == 4 and record["settings"]["kd_top_k"] == 8
    refused = runner.invoke(app, ["recover", "--model", str(pruned), "--out", str(tmp_path / "sft-top"), "--data",
                                  str(text), "--kd-top-k", "8"])
    assert refused.exit_code == 2 and "error: kd_top_k caches the teacher's logits for --method kd" in refused.stderr
    budget = _json(runner.invoke(app, ["recover", "--model", str(pruned), "--out", str(tmp_path / "tokens"), "--data",
                                       str(text), "--max-tokens", "200", "--batch-size", "2", "--max-length", "32",
                                       "--limit", "2", "--json"]))
    assert (budget["steps"], budget["tokens"], budget["time_budget_spent"]) == (4, 256, False)  # 64 tokens an update
    both = runner.invoke(app, ["recover", "--model", str(pruned), "--out", str(tmp_path / "both"), "--data",
                               str(text), "--max-tokens", "200", "--max-steps", "3"])
    assert both.exit_code == 2 and "error: max_tokens and max_steps both set the number of updates" in both.stderr
    unknown = runner.invoke(app, ["recover", "--model", str(model_dir), "--out", str(tmp_path / "kd2"), "--data",
                                  str(text), "--method", "kd"])  # an unpruned model names no original
    assert unknown.exit_code == 2 and "pass --teacher" in unknown.stderr


@pytest.fixture
def calib_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("\n\n".join(" ".join(f"w{(i * 3 + j) % 90}" for j in range(24)) for i in range(8)))
    return path


def test_score_with_fidelity_diagnostic(model_dir, calib_file, tmp_path):
    out = _json(runner.invoke(app, ["score", "--model", str(model_dir), "--scorer", "minillm", "-o", "estimator=spsa",
                                    "-o", "n_probes=2", "--calib-file", str(calib_file), "--n-samples", "2",
                                    "--calib-seq-len", "8", "--diagnose", "--probes", "1,3", "--json",
                                    "--out", str(tmp_path / "s.safetensors")]))
    assert out["options"]["estimator"] == "spsa" and len(out["per_layer_head_mean"]) == 4
    assert -1 <= out["fidelity"]["cosine"] <= 1
    assert [r["n_probes"] for r in out["probe_sweep"]] == [1, 3]
    assert (tmp_path / "s.safetensors").is_file()


def test_the_default_scorer_is_flap_on_calibration_data(model_dir, data_dir, tmp_path):
    _json(runner.invoke(app, ["plan", "--model", str(model_dir), "--ratio", "0.2", "--protect", "", "--calib",
                              "wikitext2", "--n-samples", "2", "--calib-seq-len", "16", "--out",
                              str(tmp_path / "plan.json"), "--json"]))
    assert PruningPlan.load(tmp_path / "plan.json").scorer == "flap"


def test_prune_with_a_calibrated_scorer(model_dir, calib_file, tmp_path):
    out = _json(runner.invoke(app, ["prune", "--model", str(model_dir), "--scorer", "wanda-sp", "--calib-file",
                                    str(calib_file), "--n-samples", "4", "--calib-seq-len", "8", "--protect", "",
                                    "--out", str(tmp_path / "p"), "--json"]))
    assert out["params_after"] < out["params_before"]
    plan = PruningPlan.load(tmp_path / "p" / "pruning_plan.json")
    assert plan.scorer == "wanda-sp"


def test_bad_scorer_option_is_reported(model_dir):
    result = runner.invoke(app, ["plan", "--model", str(model_dir), "--scorer", "magnitude", "-o", "q=3"])
    assert result.exit_code == 2 and "unknown option(s) ['q'] for scorer 'magnitude'; allowed: p" in result.stderr


def test_a_path_under_an_unknown_user_is_bad_input(tmp_path):
    result = runner.invoke(app, ["eval", "--model", "~no-such-user-minillm/model"])
    assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1].startswith(
        "error: cannot expand '~no-such-user-minillm/model'")


def test_eval_compare_to_with_speed_writes_the_run_dir(model_dir, tmp_path, data_dir):
    pruned = tmp_path / "pruned"
    _json(runner.invoke(app, ["prune", "--model", str(model_dir), "--scorer", "magnitude", "--ratio", "0.3",
                              "--protect", "",
                              "--out", str(pruned), "--json"]))
    out = _json(runner.invoke(app, ["eval", "--model", str(pruned), "--compare-to", str(model_dir), "--tasks",
                                    "arc_easy", "--limit", "2", "--seq-len", "16", "--speed", "--run-dir",
                                    str(tmp_path / "run"), "--json"]))
    assert out["schema"] == "minillm.run/1"
    assert out["pruned"]["memory/load_peak_mb"] > 0 and out["original"]["disk_mb"] > out["pruned"]["disk_mb"]
    assert 0 <= out["comparison"]["agreement/wikitext2"] <= 1 and "speedup/decode/bs8" in out["comparison"]
    assert "acc/arc_easy" in out["pruned"] and (tmp_path / "run" / "lm_eval_pruned.json").is_file()


def test_plan_with_a_searched_allocation_and_obs_reselection(model_dir, calib_file, tmp_path):
    out = _json(runner.invoke(app, ["prune", "--model", str(model_dir), "--scorer", "obs", "--ratio", "0.3",
                                    "--allocation", "search", "--search-generations", "2", "--search-offspring", "2",
                                    "--protect", "", "--calib-file", str(calib_file), "--n-samples", "8",
                                    "--calib-seq-len", "16", "--recon-select", "obs", "--out", str(tmp_path / "m"),
                                    "--json"]))
    plan = PruningPlan.load(tmp_path / "m" / "pruning_plan.json")
    assert plan.provenance["search"]["evaluations"] == 5 and plan.provenance["reconstruction"]["select"] == "obs"
    assert out["params_after"] == plan.predicted_params


@pytest.mark.slow
def test_prune_killed_at_any_moment_leaves_the_old_model_or_the_new_one(model_dir, tmp_path):
    """SIGKILL `minillm prune --overwrite` at points spread over its run: `--out` always holds a complete model
    (the previous one or the new one, loadable), and the next run succeeds and leaves no hidden leftovers."""
    import sys

    from minillm_core.io import load_pruned
    from tests.helpers import kill_at_points

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "minillm_core.cli", "prune", "--model", str(model_dir), "--scorer", "magnitude",
           "--ratio", "0.3", "--protect", "", "--no-reconstruct", "--out", str(out), "--overwrite"]

    def check() -> None:
        if not out.exists():  # killed between the two renames: the next run puts the old model back first
            assert list(tmp_path.glob(".out.old-*")), "the previous model must survive somewhere"
        else:
            load_pruned(out, device="cpu")

    kill_at_points(cmd, (0.6, 0.85, 0.92, 0.96, 0.98, 0.995), check)
    load_pruned(out, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_recover_killed_at_any_moment_resumes_or_restarts_cleanly(model_dir, tmp_path, data_dir):
    """SIGKILL `minillm recover` while it trains and saves: a checkpoint it left is whole (or absent), the final
    model is never half there, and the same command then finishes with no hidden leftovers."""
    import sys

    from minillm_core.io import load_pruned
    from minillm_core.recovery import CHECKPOINT_DIR, RECOVERY_FILE
    from minillm_core.recovery.train import read_checkpoint
    from tests.helpers import kill_at_points

    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(" ".join(f"w{(i * 7 + j) % 90}" for j in range(40)) for i in range(20)))
    pruned = tmp_path / "pruned"
    _json(runner.invoke(app, ["prune", "--model", str(model_dir), "--scorer", "magnitude", "--ratio", "0.3",
                              "--protect", "", "--no-reconstruct", "--out", str(pruned), "--json"]))
    out = tmp_path / "rec"
    cmd = [sys.executable, "-m", "minillm_core.cli", "recover", "--model", str(pruned), "--out", str(out), "--data",
           str(text), "--epochs", "3", "--batch-size", "2", "--max-length", "32", "--limit", "2", "--overwrite"]

    def check() -> None:
        if (out / CHECKPOINT_DIR).exists():
            assert read_checkpoint(out / CHECKPOINT_DIR) is not None  # whole, or it would raise
        if (out / RECOVERY_FILE).exists():
            load_pruned(out, device="cpu")

    kill_at_points(cmd, (0.5, 0.8, 0.9, 0.97), check)
    assert json.loads((out / RECOVERY_FILE).read_text())["steps"] > 0
    load_pruned(out, device="cpu")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
