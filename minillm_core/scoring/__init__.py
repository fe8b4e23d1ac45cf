"""Importance criteria, one module per family, each a registered `Scorer`.

Importing this package registers them; `make_scorer(name, **options)` builds one.
"""

from minillm_core.scoring import flap, fms, magnitude, taylor, wanda  # noqa: F401  (registration)
from minillm_core.scoring.base import DEFAULT_SCORER, SCORERS, GroupScores, Need, ScoreConfig, Scorer, make_scorer

__all__ = ["DEFAULT_SCORER", "SCORERS", "GroupScores", "Need", "ScoreConfig", "Scorer", "make_scorer"]
