"""Runs in their own process: a real prune+eval run on a tiny model directory, LoRA recovery, cancel, a killed
worker detected as failed, and the id rules. (`tiny_model_dir`, `runs_dir`, `spec_for` are in conftest.)
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from minillm_core import runs
from minillm_core.errors import MiniLLMError
from minillm_core.recovery import RecoveryConfig
from tests.helpers import spec_for


def wait_for(run_id: str, root: Path, states=runs.TERMINAL, timeout: float = 120) -> runs.RunStatus:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = runs.status(run_id, root)
        if st.state in states:
            return st
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} still {runs.status(run_id, root).state} after {timeout} s")


def log_of(root: Path, run_id: str) -> str:
    return (root / run_id / "job.log").read_text()


def test_run_goes_to_the_end_and_writes_results(tiny_model_dir, runs_dir):
    run_id = runs.submit(spec_for(tiny_model_dir), runs_dir)
    st = wait_for(run_id, runs_dir)
    folder = runs_dir / run_id
    assert st.state == "done", (st.error, log_of(runs_dir, run_id))
    assert st.fraction == 1.0 and st.started and st.finished and st.steps == 6
    metrics = runs.read_metrics(run_id, runs_dir)
    assert metrics["pruned"]["params"] < metrics["original"]["params"]
    assert metrics["pruned"]["params"] == metrics["summary"]["params_after"]
    assert 0 < metrics["pruned"]["disk_mb"] < metrics["original"]["disk_mb"]  # both sizes on disk, not "None"
    assert metrics["schema"] == "minillm.run/1" and metrics["scorer"] == "magnitude" and metrics["ratio"] == 0.2
    assert metrics["details"]["pruned"]["perplexity"]["wikitext2"]["n_windows"] == 2
    assert metrics["pruned"]["ppl/wikitext2"] > 1 and metrics["retained"]["ppl/wikitext2"] > 0
    assert metrics["pruned"]["speed/decode_tps/bs1"] > 0 and metrics["comparison"]["speedup/decode/bs1"] > 0
    assert 0 <= metrics["comparison"]["agreement/wikitext2"] <= 1 and metrics["comparison"]["kl/wikitext2"] >= 0
    assert metrics["seconds"] > 0 and "recovered" not in metrics
    assert (folder / "metrics.csv").is_file()
    assert (folder / "plan.json").is_file() and (folder / "model" / "config.json").is_file()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    run = runs.get(run_id, runs_dir)
    assert run.model_dir == metrics["model_dir"] == str(folder / "model") and run.plan_path == str(folder / "plan.json")
    from minillm_core import workflow

    reloaded = workflow.load(run.model_dir, device="cpu")
    assert workflow.count_params(reloaded.model) == metrics["pruned"]["params"]


def test_failing_run_records_the_error(tiny_model_dir, runs_dir):
    missing = tiny_model_dir.parent / "no-such-model"  # a user error: shown as its message, not a traceback
    run_id = runs.submit(spec_for(tiny_model_dir, model=str(missing)), runs_dir)
    st = wait_for(run_id, runs_dir)
    assert st.state == "failed"
    assert st.error == f"model path {missing} does not exist"
    assert runs.read_metrics(run_id, runs_dir) is None


def test_cancel_kills_the_process_group(tiny_model_dir, runs_dir):
    run_id = runs.submit(spec_for(tiny_model_dir, limit=None, perplexity=("wikitext2", "ptb")), runs_dir)
    wait_for(run_id, runs_dir, states={"running", *runs.TERMINAL})
    pid = runs.status(run_id, runs_dir).pid
    st = runs.cancel(run_id, runs_dir)
    assert st.state == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert runs.status(run_id, runs_dir).state == "cancelled"  # stays cancelled


def test_killed_process_is_detected_as_failed(tiny_model_dir, runs_dir):
    run_id = runs.submit(spec_for(tiny_model_dir, limit=None, perplexity=("wikitext2", "ptb")), runs_dir)
    st = wait_for(run_id, runs_dir, states={"running", *runs.TERMINAL})
    assert st.state == "running"
    os.killpg(st.pid, signal.SIGKILL)
    st = wait_for(run_id, runs_dir, timeout=10)
    assert st.state == "failed"
    assert "process ended unexpectedly" in st.error
    assert json.loads((runs_dir / run_id / "status.json").read_text())["state"] == "failed"


def test_id_validation(runs_dir):
    with pytest.raises(MiniLLMError, match="invalid run id"):
        runs.status("../etc", runs_dir)
    with pytest.raises(MiniLLMError, match="no run"):
        runs.status("abcdefghij", runs_dir)
    with pytest.raises(MiniLLMError, match="submit needs a RunSpec"):
        runs.submit({"model": "x"}, runs_dir)


def test_run_with_lora_recovery_records_before_and_after(tiny_model_dir, runs_dir, tmp_path):
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(" ".join(f"w{(i * 5 + j) % 90}" for j in range(30)) for i in range(12)))
    recovery = RecoveryConfig(data=str(text), max_steps=3, batch_size=2, max_length=32, rank=4, alpha=8.0,
                              eval_every=2)
    run_id = runs.submit(spec_for(tiny_model_dir, recovery=recovery, measure_speed=False), runs_dir)
    st = wait_for(run_id, runs_dir)
    assert st.state == "done", (st.error, log_of(runs_dir, run_id))
    assert st.steps == 8
    metrics = runs.read_metrics(run_id, runs_dir)
    assert metrics["recovery"]["steps"] == 3 and len(metrics["recovery"]["losses"]) == 3
    assert metrics["recovery"]["settings"]["rank"] == 4
    assert metrics["recovered"]["ppl/wikitext2"] > 1
    assert (runs_dir / run_id / "recovered" / "recovery.json").is_file()
    assert [r["step"] for r in runs.loss_curve(run_id, runs_dir)] == [1, 2, 3]
    curve = metrics["recovery"]["curve"]  # perplexity against tokens: as pruned, after update 2, recovered
    assert [c["step"] for c in curve] == [0, 2, 3] and curve[0]["ppl/wikitext2"] == metrics["pruned"]["ppl/wikitext2"]
    assert curve[-1]["ppl/wikitext2"] == metrics["recovered"]["ppl/wikitext2"]
    assert 0 < curve[1]["tokens"] < curve[2]["tokens"] == metrics["recovery"]["tokens"]


def test_run_with_reconstruction_records_perplexity_before_and_after_the_refit(tiny_model_dir, runs_dir):
    spec = spec_for(tiny_model_dir, measure_speed=False, reconstruct=runs.ReconstructConfig(),
                    calibration=runs.CalibrationConfig("wikitext2", n_samples=4, seq_len=16))
    run_id = runs.submit(spec, runs_dir)
    st = wait_for(run_id, runs_dir)
    assert st.state == "done", (st.error, log_of(runs_dir, run_id))
    assert st.steps == 7  # load, evaluate original, prune, reconstruct, save, evaluate pruned, compare
    metrics = runs.read_metrics(run_id, runs_dir)
    assert metrics["before_reconstruction"]["ppl/wikitext2"] > 1
    assert metrics["pruned"]["ppl/wikitext2"] > 1
    rows = metrics["reconstruction"]["projections"]
    assert rows and all(r["error_after"] <= r["error_before"] + 1e-6 for r in rows)
    assert metrics["reconstruction"]["calibration_rows"] == 4
    saved = json.loads((runs_dir / run_id / "model" / "pruning_plan.json").read_text())
    assert saved["provenance"]["reconstruction"]["target"] == "local"
    assert runs.read_spec(run_id, runs_dir).reconstruct == runs.ReconstructConfig()


def test_run_measured_in_llamacpp_keeps_the_pruned_gguf(tiny_model_dir, runs_dir, tmp_path):
    """The job option: both models exported to q8_0 GGUF and measured in llama.cpp; the metrics join the original and
    pruned columns, the decode speed-up the comparison; only the pruned model's GGUF stays (the Runs page offers it)."""
    import shutil

    from tests.helpers import char_tokenizer, write_tokenizer_gguf

    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny"))
    write_tokenizer_gguf(model_dir / "tokenizer.gguf", char_tokenizer(), 96)  # the model's GGUF vocabulary
    run_id = runs.submit(spec_for(model_dir, measure_speed=False, llamacpp=True), runs_dir)
    st = wait_for(run_id, runs_dir)
    assert st.state == "done", (st.error, log_of(runs_dir, run_id))
    assert st.steps == 7 and runs.read_spec(run_id, runs_dir).llamacpp  # the 6 of a plain run + llama.cpp
    metrics = runs.read_metrics(run_id, runs_dir)
    for side in ("original", "pruned"):  # q8_0 weights and 8-bit activations: close to PyTorch, not equal
        assert metrics[side]["llamacpp/ppl/wikitext2"] == pytest.approx(metrics[side]["ppl/wikitext2"], rel=0.05)
        assert metrics[side]["llamacpp/decode_tps/t1"] > 0
    assert metrics["pruned"]["llamacpp/file_mb"] < metrics["original"]["llamacpp/file_mb"]
    assert metrics["comparison"]["speedup/llamacpp_decode_tps/t1"] > 0
    assert [p.name for p in (runs_dir / run_id / "gguf").iterdir()] == ["model-q8_0.gguf"]
    assert runs.gguf_file(run_id, "q8_0", runs_dir) == runs.export_gguf(run_id, "q8_0", runs_dir)
    assert runs.gguf_file(run_id, "f16", runs_dir) is None
    assert runs.export_gguf(run_id, "f16", runs_dir).name == "model-f16.gguf"
    with pytest.raises(MiniLLMError, match="allowed: q8_0, q4_0, f16, f32"):
        runs.export_gguf(run_id, "q3", runs_dir)
