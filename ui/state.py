"""Per-browser-session state: the keys every page reads and writes, and small accessors over `st.session_state`.

Scores, plans, uploads and the job list live here, so two browser sessions never see each other's work; scores
are also kept on the server by model and calibration (`remember_scores`), which a refresh finds again.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import streamlit as st

from minillm_core.errors import MiniLLMError
from minillm_core.loading import DEFAULT_MODEL

MODEL = "model_name"  # what to load: bundled name, Hub id, directory or .gguf path
DTYPE = "model_dtype"
DEVICE = "model_device"
CALIBRATION = "calibration"  # CalibrationConfig kwargs
SCORES = "scores"  # {model key: {label: GroupScores}}
ACTIVE_SCORER = "active_scorer"  # label of the scores the plan page uses
FIDELITY = "fidelity_sweep"  # rows of scoring.fidelity.probe_sweep for the current session
PLAN = "plan"  # the current PruningPlan (built from the slider or uploaded)
UPLOADED_PLAN = "uploaded_plan"  # a PruningPlan read from a file, overriding the slider while set
PLAN_OPTIONS = "plan_options"  # the plan page's widget values, kept while other pages show
JOBS = "jobs"  # job ids started in this session, newest last
UPLOAD_DIR = "upload_dir"  # this session's private temp directory
DEMO_JOB = "demo_job"  # the quick demo's run: the Run page opens Compare when it is done

DEFAULTS: dict[str, Any] = {
    MODEL: DEFAULT_MODEL,
    DTYPE: "auto",
    DEVICE: "auto",
    CALIBRATION: {"source": "c4", "n_samples": 32, "seq_len": 128, "seed": 0, "path": None},
    ACTIVE_SCORER: None,
    PLAN: None,
    UPLOADED_PLAN: None,
}


def init() -> None:
    """Fill missing keys with defaults (mutable ones fresh per session)."""
    for key, value in DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = dict(value) if isinstance(value, dict) else value
    st.session_state.setdefault(SCORES, {})
    st.session_state.setdefault(JOBS, [])


def restore_widgets(store_key: str, defaults: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Seed widget keys `prefix + name` from a plain session dict that outlives page changes.

    Streamlit drops the state of widgets a run did not draw, so a page's widgets would reset after visiting another
    page; the page writes its values back with `remember_widgets`.
    """
    saved = st.session_state.setdefault(store_key, dict(defaults))
    for name, default in defaults.items():
        if prefix + name not in st.session_state:
            st.session_state[prefix + name] = saved.get(name, default)
    return saved


def remember_widgets(store_key: str, values: dict[str, Any]) -> None:
    st.session_state[store_key] = dict(values)


def model_key() -> tuple[str, str, str]:
    return (st.session_state[MODEL], st.session_state[DTYPE], st.session_state[DEVICE])


_RESTORED = "_scores_restored"
_SERVER_SCORES_MAX = 64  # labels kept on the server (all sessions), oldest dropped first


@st.cache_resource
def _server_scores() -> tuple[threading.Lock, OrderedDict]:
    """Scores computed on this server by any session, keyed by model, calibration and label: a browser refresh
    (a new session) finds what it computed. Scores follow from the model, the calibration and the options alone,
    and an uploaded calibration file's path is private to its session, so nothing leaks between users."""
    return threading.Lock(), OrderedDict()


def _server_key() -> str:
    calib = st.session_state[CALIBRATION]
    return "|".join(model_key()) + "|" + json.dumps(calib, sort_keys=True, default=str)


def scores_for_model() -> dict[str, Any]:
    """{label: GroupScores} for the current model: computed in this session, or, the first time a session asks,
    computed earlier on this server for the same model and calibration (what a browser refresh would lose)."""
    key = "|".join(model_key())
    mine = st.session_state[SCORES].setdefault(key, {})
    restored = st.session_state.setdefault(_RESTORED, set())
    if key not in restored:
        restored.add(key)
        lock, cache = _server_scores()
        prefix = _server_key() + "|"
        with lock:
            for k, v in cache.items():
                if k.startswith(prefix):
                    mine.setdefault(k[len(prefix):], v)
    return mine


def forget_server_scores() -> None:
    """Drop the scores kept on the server (tests start from a cold server this way)."""
    _server_scores.clear()


def remember_scores(label: str, scores: Any) -> None:
    """Keep freshly computed scores in this session and on the server (see `_server_scores`)."""
    scores_for_model()[label] = scores
    lock, cache = _server_scores()
    with lock:
        cache[_server_key() + "|" + label] = scores
        cache.move_to_end(_server_key() + "|" + label)
        while len(cache) > _SERVER_SCORES_MAX:
            cache.popitem(last=False)


def active_scores() -> Any | None:
    scores = scores_for_model()
    label = st.session_state.get(ACTIVE_SCORER)
    if label in scores:
        return scores[label]
    return next(reversed(scores.values()), None) if scores else None


_SIDEBAR_SLOT = "_sidebar_status_slot"


def sidebar_status(slot: Any | None = None) -> None:
    """Draw (or redraw, after a page changed them) the sidebar's scores and plan captions in the app's slot."""
    if slot is not None:
        st.session_state[_SIDEBAR_SLOT] = slot
    target = st.session_state.get(_SIDEBAR_SLOT)
    if target is None:
        return
    lines = []
    scores = scores_for_model()
    if scores:
        lines.append(f"Scores: {', '.join(scores)}")
    if st.session_state.get(PLAN) is not None:
        lines.append(f"Plan: remove {st.session_state[PLAN].removed_fraction:.1%} of parameters")
    with target.container():
        for line in lines:
            st.caption(line)


class SessionFolder:
    """A temp directory that lives as long as its owner: removed when the browser session's state is dropped
    (Streamlit discards a closed session's state) or when the server process exits."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="minillm-session-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)


def upload_dir() -> Path:
    """A temp directory private to this browser session (uploads never share a path across sessions)."""
    folder = st.session_state.get(UPLOAD_DIR)
    if not isinstance(folder, SessionFolder) or not folder.path.is_dir():
        st.session_state[UPLOAD_DIR] = folder = SessionFolder()
    return folder.path


@contextmanager
def user_errors():
    """Show a `MiniLLMError` as a red message and stop the page, instead of a traceback."""
    try:
        yield
    except MiniLLMError as exc:
        st.error(str(exc))
        st.stop()
