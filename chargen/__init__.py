"""chargen: train a character-level LSTM on your own text and sample from it.

    >>> import chargen
    >>> model = chargen.load()                 # the bundled names model
    >>> model.sample(n=3, prompt="Ma", seed=1)

Importing chargen is cheap: torch and numpy load only when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ChargenError,
    CheckpointError,
    ConfigError,
    CorpusError,
    MissingExtra,
    SamplingError,
    TrainingError,
    TrainingInterrupted,
    UsageError,
    VocabularyError,
    WriteError,
)

from ._version import __version__

__all__ = [
    "__version__",
    "load",
    "train",
    "Model",
    "SampleConfig",
    "ChargenError",
    "CheckpointError",
    "ConfigError",
    "CorpusError",
    "MissingExtra",
    "SamplingError",
    "TrainingError",
    "TrainingInterrupted",
    "UsageError",
    "VocabularyError",
    "WriteError",
]

if TYPE_CHECKING:
    from .api import Model, load, train


def __getattr__(name: str) -> Any:
    if name in ("load", "train", "Model"):
        from . import api

        return getattr(api, name)
    if name == "SampleConfig":  # every sampling option, declared once (help(chargen.SampleConfig))
        from .config import SampleConfig

        return SampleConfig
    raise AttributeError(f"module 'chargen' has no attribute {name!r}")
