"""Background jobs: a real prune+eval job on a tiny model directory, cancel, and detection of a killed worker.

`tiny_model_dir` (also used by the run-store and app tests) saves a tiny random Llama with a character tokenizer.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from minillm_core import jobs
from minillm_core.errors import MiniLLMError
from tests.helpers import spec_for


def wait_for(job_id: str, root: Path, states=jobs.TERMINAL, timeout: float = 120) -> jobs.JobStatus:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = jobs.status(job_id, root)
        if st.state in states:
            return st
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {jobs.status(job_id, root).state} after {timeout} s")


def test_job_runs_to_the_end_and_writes_results(tiny_model_dir, runs_dir):
    job_id = jobs.submit(spec_for(tiny_model_dir), runs_dir)
    st = wait_for(job_id, runs_dir)
    folder = runs_dir / job_id
    assert st.state == "done", (st.error, (folder / jobs.LOG_FILE).read_text())
    assert st.fraction == 1.0 and st.started and st.finished
    metrics = jobs.read_metrics(job_id, runs_dir)
    assert metrics["pruned"]["params"] < metrics["original"]["params"]
    assert metrics["pruned"]["params"] == metrics["summary"]["params_after"]
    assert metrics["schema"] == "minillm.run/1"
    assert metrics["details"]["pruned"]["perplexity"]["wikitext2"]["n_windows"] == 2
    assert metrics["pruned"]["ppl/wikitext2"] > 1 and metrics["retained"]["ppl/wikitext2"] > 0
    assert metrics["pruned"]["speed/decode_tps/bs1"] > 0 and metrics["comparison"]["speedup/decode/bs1"] > 0
    assert 0 <= metrics["comparison"]["agreement/wikitext2"] <= 1 and metrics["comparison"]["kl/wikitext2"] >= 0
    assert (folder / "metrics.csv").is_file()
    assert (folder / jobs.PLAN_FILE).is_file() and (folder / jobs.MODEL_SUBDIR / "config.json").is_file()
    from minillm_core.loading import load_model

    reloaded = load_model(metrics["model_dir"], device="cpu")
    assert sum(p.numel() for p in reloaded.model.parameters()) > 0


def test_failing_job_records_the_error(tiny_model_dir, runs_dir):
    missing = tiny_model_dir.parent / "no-such-model"  # a user error: shown as its message, not a traceback
    job_id = jobs.submit(spec_for(tiny_model_dir, model=str(missing)), runs_dir)
    st = wait_for(job_id, runs_dir)
    assert st.state == "failed"
    assert st.error == f"model path {missing} does not exist"


def test_cancel_kills_the_process_group(tiny_model_dir, runs_dir):
    job_id = jobs.submit(spec_for(tiny_model_dir, limit=None, perplexity=("wikitext2", "ptb")), runs_dir)
    wait_for(job_id, runs_dir, states={"running", *jobs.TERMINAL})
    pid = jobs.status(job_id, runs_dir).pid
    st = jobs.cancel(job_id, runs_dir)
    assert st.state == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert jobs.status(job_id, runs_dir).state == "cancelled"  # stays cancelled


def test_killed_process_is_detected_as_failed(tiny_model_dir, runs_dir):
    job_id = jobs.submit(spec_for(tiny_model_dir, limit=None, perplexity=("wikitext2", "ptb")), runs_dir)
    st = wait_for(job_id, runs_dir, states={"running", *jobs.TERMINAL})
    assert st.state == "running"
    os.killpg(st.pid, signal.SIGKILL)
    st = wait_for(job_id, runs_dir, timeout=10)
    assert st.state == "failed"
    assert "process ended unexpectedly" in st.error
    assert json.loads((runs_dir / job_id / jobs.STATUS_FILE).read_text())["state"] == "failed"


def test_spec_and_id_validation(runs_dir):
    with pytest.raises(MiniLLMError, match="allowed: wikitext2, ptb"):
        jobs.JobSpec(model="x", plan={}, perplexity=("lambada",))
    with pytest.raises(MiniLLMError, match="limit"):
        jobs.JobSpec(model="x", plan={}, limit=0)
    with pytest.raises(MiniLLMError, match="invalid job id"):
        jobs.status("../etc", runs_dir)
    with pytest.raises(MiniLLMError, match="no job"):
        jobs.status("abcdefghij", runs_dir)


def test_job_with_lora_recovery_records_before_and_after(tiny_model_dir, runs_dir, tmp_path):
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(" ".join(f"w{(i * 5 + j) % 90}" for j in range(30)) for i in range(12)))
    recovery = {"data": str(text), "max_steps": 3, "batch_size": 2, "max_length": 32, "rank": 4, "alpha": 8.0}
    job_id = jobs.submit(spec_for(tiny_model_dir, recovery=recovery, measure_speed=False), runs_dir)
    st = wait_for(job_id, runs_dir)
    assert st.state == "done", (st.error, (runs_dir / job_id / jobs.LOG_FILE).read_text())
    metrics = jobs.read_metrics(job_id, runs_dir)
    assert metrics["recovery"]["steps"] == 3 and len(metrics["recovery"]["losses"]) == 3
    assert metrics["recovered"]["ppl/wikitext2"] > 1
    assert (runs_dir / job_id / jobs.RECOVERED_SUBDIR / "recovery.json").is_file()


def test_bad_recovery_settings_fail_at_submission(tiny_model_dir, runs_dir):
    with pytest.raises(MiniLLMError, match="bad recovery settings"):
        jobs.submit(spec_for(tiny_model_dir, recovery={"rnak": 8}), runs_dir)
