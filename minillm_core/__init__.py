"""MINI-LLM Studio core: structured pruning of Hugging Face causal LMs (score -> plan -> apply -> evaluate).

Never imports streamlit; the CLI (`minillm_core.cli`) and the dashboard are thin callers of this package.
"""

from minillm_core.version import __version__

__all__ = ["__version__", "load_model", "load_pruned", "save_pruned"]


def __getattr__(name: str):
    """Lazy top-level API (`minillm_core.load_pruned(dir)`), so `import minillm_core` stays cheap."""
    if name in ("load_pruned", "save_pruned"):
        from minillm_core import io

        return getattr(io, name)
    if name == "load_model":
        from minillm_core.loading import load_model

        return load_model
    raise AttributeError(f"module 'minillm_core' has no attribute {name!r}")
