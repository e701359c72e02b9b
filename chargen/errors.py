"""The exceptions chargen raises. Only cli.py turns them into `Error: ...` and an exit code."""

from __future__ import annotations


class ChargenError(Exception):
    """Base class of every error chargen reports to a user; the message is one line."""

    exit_code = 1


class UsageError(ChargenError):
    """A value given on the command line or in a config is out of range or malformed."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration holds an unknown key or a bad value."""


class CorpusError(ChargenError):
    """A corpus cannot be read or is unfit for training (bad UTF-8, empty, too short)."""


class VocabularyError(ChargenError):
    """Text holds characters the vocabulary does not know."""


class CheckpointError(ChargenError):
    """A checkpoint is missing, corrupt, not a chargen checkpoint, or of an unknown version."""


class SamplingError(ChargenError):
    """Sampling cannot produce what was asked (e.g. not enough unique samples)."""


class TrainingError(ChargenError):
    """Training cannot go on (divergence, disk full)."""
