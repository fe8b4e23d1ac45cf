"""Architecture adapters, registered by `config.model_type`.

Importing this package registers every adapter; `get_adapter(model)` picks one.
"""

from minillm_core.modeling import bloom, llama, opt  # noqa: F401  (registration)
from minillm_core.modeling.base import (
    ADAPTERS,
    ArchAdapter,
    LayerPlanIndices,
    LayerShape,
    Slice,
    get_adapter,
    max_context,
)

__all__ = ["ADAPTERS", "ArchAdapter", "LayerPlanIndices", "LayerShape", "Slice", "get_adapter", "max_context"]
