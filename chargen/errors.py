"""The exceptions chargen raises. Only cli.py turns them into `Error: ...` and an exit code.

A message names an option by its field name in backticks (`min_len`), and each front end spells
it its own way with `render`: `--min-len` on the command line, `'min_len'` in JSON, `min_len` in
Python (`str(exc)`).
"""

from __future__ import annotations

import re
from typing import Callable

_OPTION = re.compile(r"`([a-z][a-z0-9_]*)`")
_PYTHON = {"num": "n", "no_lines": "lines=False"}  # Python keywords where they differ from the field


def cannot_read(what: object, exc: OSError) -> str:
    """The one-line reason a file could not be read, as corpus and checkpoint errors both word it."""
    reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or exc)
    return f"{what} cannot be read ({reason})"


class ChargenError(Exception):
    """Base class of every error chargen reports to a user; the message is one line."""

    exit_code = 1

    @property
    def options(self) -> list[str]:
        """The options the message names (field names), in order."""
        return _OPTION.findall(self.message)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def render(self, spell: Callable[[str], str] = lambda name: _PYTHON.get(name, name)) -> str:
        """The message with each option named as `spell(field name)` says (in Python: the keyword)."""
        return _OPTION.sub(lambda m: spell(m.group(1)), self.message)

    def __str__(self) -> str:
        return self.render()


class UsageError(ChargenError):
    """A value given on the command line or in a config is out of range or malformed."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration holds an unknown key or a bad value."""


class MissingExtra(ChargenError):
    """An optional dependency the command needs is not installed; the message names the install command."""


class CorpusError(ChargenError):
    """A corpus cannot be read or is unfit for training (bad UTF-8, empty, too short)."""


class VocabularyError(ChargenError):
    """Text holds characters the vocabulary does not know."""


class CheckpointError(ChargenError):
    """A checkpoint is missing, corrupt, not a chargen checkpoint, or of an unknown version."""


class SamplingError(ChargenError):
    """Sampling cannot produce what was asked (e.g. not enough unique samples)."""


class RunInUse(UsageError):
    """Another process is training into the same run directory."""


class TrainingError(ChargenError):
    """Training cannot go on (divergence, memory)."""


class ModelTooLarge(TrainingError):
    """A shape's weights and optimizer state alone exceed the device's free memory."""


class WriteError(ChargenError):
    """A file cannot be written (disk full, read-only directory); the previous file is intact."""

    def __init__(self, path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"cannot write {path} ({reason}); the previous file, if any, is intact")


class TrainingInterrupted(ChargenError):
    """Training was stopped by Ctrl-C, SIGTERM or a callback, after saving a resumable checkpoint
    (run_dir None: before the run began, while its length was chosen; nothing written)."""

    def __init__(self, reason: str, run_dir) -> None:
        self.reason = reason
        self.run_dir = run_dir
        self.exit_code = {"SIGINT": 130, "SIGTERM": 143}.get(reason, 1)
        super().__init__(f"training was stopped by {reason}; saved {run_dir}/last.safetensors. "
                         f"Resume with: chargen train --resume {run_dir}" if run_dir is not None else
                         f"training was stopped by {reason} before its first step; nothing was written")
