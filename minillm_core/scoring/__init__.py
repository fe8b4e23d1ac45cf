"""Importance criteria, one module per family, each a registered `Scorer`; FMS's gradient estimators are registered too.

Importing this package registers them; `make_scorer(name, **options)` builds one, `describe_scorers()` lists them.
"""

from minillm_core.scoring import flap, fms, magnitude, obs, taylor, wanda  # noqa: F401  (registration)
from minillm_core.scoring.base import (
    DEFAULT_SCORER,
    SCORERS,
    Engine,
    GroupScores,
    Need,
    ScoreConfig,
    Scorer,
    Workload,
    describe_scorers,
    make_scorer,
)

__all__ = ["DEFAULT_SCORER", "SCORERS", "Engine", "GroupScores", "Need", "ScoreConfig", "Scorer", "Workload",
           "describe_scorers", "make_scorer"]
