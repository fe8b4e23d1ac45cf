"""A run directory's layout (file names) and the one atomic writer every run file goes through.

Writers: the submitter (spec, first status), the worker (status, plan, metrics), the supervisor (pid, final status).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from minillm_core.outputs import write_json_atomic, write_text_atomic

SPEC_FILE = "spec.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
METRICS_CSV = "metrics.csv"
PLAN_FILE = "plan.json"
NAME_FILE = "name.txt"  # written only by a rename; absent: the spec's name
PID_FILE = "pid"
LOG_FILE = "job.log"
MODEL_SUBDIR = "model"
RECOVERED_SUBDIR = "recovered"
GGUF_SUBDIR = "gguf"  # GGUF files for llama.cpp, written on request (runs.export_gguf)
AB_SUBDIR = "ab"  # A/B results over prompt suites run after the run (runs.save_ab), one JSON file each
OLD_INDEX_FILE = "runs.sqlite"  # the index of runs written before the runs package (read only, never written)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """The atomic writer (`io.write_text_atomic`): a reader sees the old file or the new one, never half of one."""
    return write_text_atomic(path, text)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_json_atomic(path, data)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
