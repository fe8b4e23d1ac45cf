"""Error types of minillm_core.

Every error a user can cause derives from `MiniLLMError`; the CLI and the app show its message, not a traceback.
"""

from __future__ import annotations


class MiniLLMError(Exception):
    """A problem with the user's input or environment, worded for the user."""


class ModelLoadError(MiniLLMError):
    """A model could not be found, read or understood."""


class UnsupportedArchitectureError(MiniLLMError):
    """The model's `config.model_type` has no adapter."""


class PlanError(MiniLLMError):
    """A pruning plan cannot be built or does not fit the model."""


class ExportError(MiniLLMError):
    """A model cannot be written in the requested deployment format."""


class DataError(MiniLLMError):
    """A dataset or calibration source is missing, empty or too small."""


class RegistryError(MiniLLMError, KeyError):
    """A name is not registered, or is registered twice."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""
