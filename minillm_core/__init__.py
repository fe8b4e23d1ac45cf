"""MINI-LLM Studio core: structured pruning of Hugging Face causal LMs (score -> plan -> apply -> evaluate).

Never imports streamlit; the CLI (`minillm_core.cli`) and the dashboard are thin callers of this package.
"""

__version__ = "0.1.0"
