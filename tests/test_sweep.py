"""Sweeps (issue 16): a grid of runs in the run store, one score pass per scorer, resumable, on the local backend and
on a local Ray instance (the same results), a killed point retried without a second run, and the CLI contract."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from minillm_core import runs
from minillm_core.cli import app
from minillm_core.errors import MiniLLMError
from minillm_core.runs import sweep as sweeps
from minillm_core.runs.spec import eval_config
from minillm_core.workflow import CalibrationConfig, PlanConfig

runner = CliRunner()


@pytest.fixture
def store(tmp_path, monkeypatch, fixture_mirror) -> Path:
    """A private run store on the small fixture mirror (points tokenize only what they evaluate)."""
    monkeypatch.setenv("MINILLM_DATA_DIR", str(fixture_mirror))
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(tmp_path / "runs"))
    return tmp_path / "runs"


def spec_of(model: Path, data: Path, scorers=("magnitude", "flap"), ratios=(0.2, 0.4), **kw) -> sweeps.SweepSpec:
    return sweeps.SweepSpec(
        model=str(model), scorers=tuple(scorers), ratios=tuple(ratios), device="cpu",
        calibration=CalibrationConfig(n_samples=4, seq_len=16),
        evaluation=eval_config(limit=2, seq_len=16, measure_speed=False, data_dir=str(data)), **kw)


def sweep_run_ids(store: Path) -> list[str]:
    return sorted(r.id for r in runs.list(root=store))


def test_spec_validation_and_identity(tiny_model_dir, fixture_mirror):
    spec = spec_of(tiny_model_dir, fixture_mirror)
    assert [p.key for p in spec.points()] == ["magnitude@0.2", "magnitude@0.4", "flap@0.2", "flap@0.4"]
    assert sweeps.SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec_of(tiny_model_dir, fixture_mirror, name="other").key == spec.key  # a label, not an identity
    assert spec_of(tiny_model_dir, fixture_mirror, ratios=(0.2, 0.3)).key != spec.key
    both = spec_of(tiny_model_dir, fixture_mirror, reconstruct=(True, False))
    assert {p.key for p in both.points()} >= {"flap@0.2/no-refit", "flap@0.2"}
    for bad, match in (({"scorers": ()}, "at least one scorer"), ({"scorers": ("nope",)}, "nope"),
                       ({"ratios": (0.2, 1.0)}, r"\(0, 1\)"), ({"ratios": (0.2, 0.2)}, "repeat")):
        with pytest.raises(MiniLLMError, match=match):
            spec_of(tiny_model_dir, fixture_mirror, **bad)
    with pytest.raises(MiniLLMError, match="cpus per point"):
        sweeps.Resources(cpus=0)
    with pytest.raises(MiniLLMError, match="allowed: local, ray"):
        sweeps.run_sweep(spec, backend="slurm")


def test_local_sweep_writes_a_run_per_point_and_resumes(tiny_model_dir, store, fixture_mirror, monkeypatch):
    spec = spec_of(tiny_model_dir, fixture_mirror)
    seen = []
    result = sweeps.run_sweep(spec, "local", root=store, progress=lambda d, t, _label: seen.append((d, t)))
    assert [p["state"] for p in result.points] == ["done"] * 4, result.points
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)
    ids = sweep_run_ids(store)
    assert sorted(p["run_id"] for p in result.points) == ids and len(ids) == 4
    for p in result.points:
        run = runs.get(p["run_id"], store)
        assert run.extra == {"sweep": spec.key, "point": p["point"]}
        assert run.scorer == p["scorer"] and run.ratio == p["ratio"]
        assert p["metrics"]["ppl/wikitext2"] == run.metrics["pruned"]["ppl/wikitext2"]
        assert not any(k.startswith(("speed/", "memory/")) for k in p["metrics"])  # timings apart
    by_ratio = {(p["scorer"], p["ratio"]): p["metrics"]["params"] for p in result.points}
    assert by_ratio["flap", 0.4] < by_ratio["flap", 0.2]
    assert (store / ".sweeps" / spec.key / "scores" / "flap.safetensors").is_file()
    assert [s.key for s, _ in sweeps.list_sweeps(store)] == [spec.key]

    # Submitted again: every point is finished, nothing is scored or run again, no run is added.
    monkeypatch.setattr(sweeps, "score_pass", lambda *a: pytest.fail("scored again"))
    again = sweeps.run_sweep(spec, "local", root=store)
    assert again.skipped == 4 and sweep_run_ids(store) == ids
    assert [p["metrics"] for p in again.points] == [p["metrics"] for p in result.points]

    # A failed point is re-run in its own run folder (its plan is in its spec: no score pass either).
    failed = result.points[1]["run_id"]
    st = runs.status(failed, store)
    st.state, st.error = "failed", "a lost machine"
    runs.store.write_status(store / failed, st)
    (store / failed / "metrics.json").unlink()
    third = sweeps.run_sweep(spec, "local", root=store)
    assert third.skipped == 3 and sweep_run_ids(store) == ids
    assert runs.status(failed, store).state == "done"


def test_an_impossible_point_fails_alone(tiny_model_dir, store, fixture_mirror):
    spec = spec_of(tiny_model_dir, fixture_mirror, scorers=("magnitude",), ratios=(0.3, 0.85), reconstruct=(False,))
    result = sweeps.run_sweep(spec, "local", root=store)
    ok, impossible = result.points
    assert ok["state"] == "done" and ok["metrics"]["ppl/wikitext2"] > 0
    assert impossible["state"] == "failed" and impossible["run_id"] is None
    assert "allowed ratio range" in impossible["error"]


def test_a_killed_point_is_retried_in_the_same_run(tiny_model_dir, store, fixture_mirror):
    """The point's run process is SIGKILLed while it runs: the sweep starts it again in the same folder."""
    spec = spec_of(tiny_model_dir, fixture_mirror, scorers=("magnitude",), ratios=(0.3,), reconstruct=(False,))
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", sweeps.run_sweep(spec, "local", root=store)))
    thread.start()
    killed = _kill_first_running_point(store)
    thread.join(180)
    assert killed and out["r"].points[0]["state"] == "done", out
    assert sweep_run_ids(store) == [out["r"].points[0]["run_id"]]
    assert starts(store, out["r"].points[0]["run_id"]) == 2


def starts(store: Path, run_id: str) -> int:
    return (store / run_id / "job.log").read_text().count(sweeps.START_LINE)


def _kill_first_running_point(store: Path, parent: bool = False, timeout: float = 120) -> bool:
    """SIGKILL the run process of the first point seen running (or, with `parent`, the process that started it:
    a Ray worker); True when one was killed. At the first sight of it: a tiny model's run lasts about a second, and
    a kill just as it finishes would leave nothing to retry (a run says "running" only once it dies with its
    parent, so its worker can be killed from then on)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for run in runs.list(root=store):
            st = runs.status(run.id, store)
            if st.state == "running" and st.pid:
                pid = st.pid
                if parent:
                    pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                os.kill(pid, signal.SIGKILL)
                return True
        time.sleep(0.01)
    return False


def test_cli_sweep_json_and_errors(tiny_model_dir, store, fixture_mirror):
    args = ["sweep", "--model", str(tiny_model_dir), "--device", "cpu", "--scorers", "magnitude", "--ratios",
            "0.3,0.85", "--refit", "off", "--limit", "2", "--seq-len", "16", "--runs-dir", str(store),
            "--data-dir", str(fixture_mirror), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # one point cannot be planned
    payload = json.loads(result.stdout)
    assert [p["state"] for p in payload["points"]] == ["done", "failed"]
    assert set(payload["points"][0]) >= {"scorer", "ratio", "metrics", "run_id", "reconstruct"}
    for bad, message in ((["--backend", "slurm"], "allowed: local, ray"), (["--refit", "maybe"], "allowed: on, off"),
                         (["--scorers", "nope"], "nope"), (["--ratios", "0.2,x"], "comma-separated numbers"),
                         (["--cpus-per-point", "0"], "cpus per point"), (["--address", "auto"], "ray backend")):
        out = runner.invoke(app, [*args, *bad])
        assert out.exit_code == 2 and out.stderr.startswith("error: ") and message in out.stderr, (bad, out.output)


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_and_local_give_the_same_points(tiny_model_dir, tmp_path, fixture_mirror, monkeypatch, ray_instance):
    monkeypatch.setenv("MINILLM_DATA_DIR", str(fixture_mirror))
    spec = spec_of(tiny_model_dir, fixture_mirror, scorers=("magnitude", "wanda-sp"), ratios=(0.2, 0.4),
                   plan=PlanConfig(allocation="global"))
    local = sweeps.run_sweep(spec, "local", root=tmp_path / "local")
    remote = sweeps.run_sweep(spec, "ray", root=tmp_path / "ray")
    assert [p["state"] for p in remote.points] == ["done"] * 4, remote.points
    strip = [{k: v for k, v in p.items() if k not in ("run_id",)} for p in local.points]
    assert [{k: v for k, v in p.items() if k not in ("run_id",)} for p in remote.points] == strip
    assert len(runs.list(root=tmp_path / "ray")) == 4


def test_ray_retries_a_point_whose_worker_was_killed(tiny_model_dir, tmp_path, fixture_mirror, monkeypatch,
                                                       ray_instance):
    """The Ray worker running a point is SIGKILLed (its run process dies with it): Ray retries the task, which
    re-runs the same run folder; one run per point, all done."""
    monkeypatch.setenv("MINILLM_DATA_DIR", str(fixture_mirror))
    spec = spec_of(tiny_model_dir, fixture_mirror, scorers=("magnitude",), ratios=(0.2, 0.4), reconstruct=(False,))
    root = tmp_path / "ray"
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", sweeps.run_sweep(spec, "ray", root=root)))
    thread.start()
    killed = _kill_first_running_point(root, parent=True)
    thread.join(300)
    assert killed
    assert [p["state"] for p in out["r"].points] == ["done", "done"], out["r"].points
    assert len(runs.list(root=root)) == 2
    assert sorted(starts(root, p["run_id"]) for p in out["r"].points) == [1, 2]
