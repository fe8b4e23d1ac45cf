"""Deprecated names of the score -> plan -> apply steps; the one implementation is `minillm_core.workflow`.

Kept so scripts written against the first version (`from minillm_core.pipeline import apply_plan`) keep working.
"""

from minillm_core.workflow import count_params, geometry_of, score
from minillm_core.workflow import make_plan as plan
from minillm_core.workflow import prune as apply_plan

__all__ = ["apply_plan", "count_params", "geometry_of", "plan", "score"]
