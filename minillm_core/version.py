"""The package version, in a module of its own so anything can read it without importing the package's lazy API.

`minillm_core.__version__` re-exports it.
"""

__version__ = "0.1.0"
