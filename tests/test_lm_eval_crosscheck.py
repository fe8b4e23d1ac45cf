"""Cross-check against lm-evaluation-harness itself: same per-item log-likelihoods and choices on a fixed subset.

lm-eval runs through its Python API on the in-memory SmolLM2 with local task files that `include` lm-eval's own
task YAMLs (same prompts), pointed at the offline mirror's rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minillm_core.evaluation.tasks import ALL_TASKS, build_items, load_docs
from minillm_core.evaluation.zeroshot import score_items

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is an optional dependency (CI installs it)")
pytestmark = [pytest.mark.real_model, pytest.mark.slow]

N_ITEMS = 3
BUILTIN = {"boolq": "super_glue/boolq/default.yaml", "piqa": "piqa/piqa.yaml", "hellaswag": "hellaswag/hellaswag.yaml",
           "winogrande": "winogrande/default.yaml", "arc_easy": "arc/arc_easy.yaml",
           "arc_challenge": "arc/arc_easy.yaml", "openbookqa": "openbookqa/openbookqa.yaml"}


def _task_dir(tmp: Path, data_dir: Path) -> Path:
    """Local lm-eval task configs: lm-eval's own YAML (prompts, choices, metrics) with our mirror's rows."""
    import yaml

    lm_tasks = Path(lm_eval.__file__).parent / "tasks"
    for task in ALL_TASKS:
        rows = tmp / f"{task}.jsonl"
        rows.write_text("\n".join(json.dumps(d) for d in load_docs(task, data_dir)[:N_ITEMS]))
        config = {"include": str(lm_tasks / BUILTIN[task]), "task": f"xcheck_{task}", "tag": [],
                  "dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": {"x": str(rows)}},
                  "validation_split": "x", "test_split": None, "training_split": None, "fewshot_split": None}
        (tmp / f"xcheck_{task}.yaml").write_text(yaml.safe_dump(config))
    return tmp


def test_same_loglikelihoods_and_choices_as_lm_eval(tmp_path, real_data_dir):
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from minillm_core.loading import load_model

    lm = load_model("smollm2-135m", device="cpu")
    tasks = _task_dir(tmp_path, real_data_dir)
    out = lm_eval.simple_evaluate(model=HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=8),
                                  tasks=[f"xcheck_{t}" for t in ALL_TASKS], num_fewshot=0, log_samples=True,
                                  task_manager=TaskManager(include_path=str(tasks)))
    for task in ALL_TASKS:
        theirs = {s["doc_id"]: [r[0] for r in s["filtered_resps"]] for s in out["samples"][f"xcheck_{task}"]}
        mine = score_items(lm.model, lm.tokenizer, task, build_items(task, load_docs(task, real_data_dir))[:N_ITEMS])
        for p in mine.predictions:
            ref = theirs[p["doc_id"]]
            assert p["loglikelihoods"] == pytest.approx(ref, abs=2e-3), task
            assert p["pred"] == max(range(len(ref)), key=ref.__getitem__), task
        assert mine.metrics["acc"] == pytest.approx(out["results"][f"xcheck_{task}"]["acc,none"]), task
        if "acc_norm" in mine.metrics:
            assert mine.metrics["acc_norm"] == pytest.approx(out["results"][f"xcheck_{task}"]["acc_norm,none"]), task
