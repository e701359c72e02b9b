"""A run directory: what a training run saves and restores (`RunState`), and the files it writes.

    best.safetensors   the model with the best validation loss so far
    last.safetensors   the latest model plus the RunState, for --resume
    metrics.jsonl      one JSON object per evaluation
    loss.svg           the loss curve, redrawn at every evaluation
    config.json        the resolved configuration the run trains with

    .lock              held (flock) by the one process training into the directory, with its
                       PID, host and start time; the kernel releases it when that process ends,
                       however it ends, so a killed run never blocks the next

Only rank 0 writes (under torchrun), only while it holds the lock, and every file goes through an
atomic rename. Readers (sample, eval, info, export) need no lock: they only ever see whole files.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ..checkpoint import BEST, CONFIG, LAST, METRICS, Checkpoint, is_chargen_checkpoint, save_checkpoint
from ..errors import CheckpointError, RunInUse, UsageError
from ..files import atomic_write
from .plot import LOSS_SVG, write_loss_curve

LOCK = ".lock"
# Settings a resumed run must share with the run it continues (the rest may change).
RESUME_FIXED = ("batch_size", "seq_len", "val_fraction", "seed", "line_mode", "labels")


@dataclass
class RunState:
    """Everything a run saves and restores besides its weights: where it is in the data and the
    schedule, how it is doing, and the optimizer, RNG and hidden state that make resuming exact.

    Stored in last.safetensors as the "resume" metadata (the scalars, as JSON) and "resume.*"
    tensors (optimizer moments "optim.<i>.<key>", the hidden state of every stream "state.<j>",
    the RNG states "rng.cpu" and "rng.cuda").
    """

    step: int = 0
    epoch: int = 0
    window: int = 0  # the next window of the epoch
    chars_seen: int = 0
    elapsed: float = 0.0  # seconds of training so far
    best_val_loss: float = math.inf
    last_val_loss: float = math.nan
    lr_scale: float = 1.0  # halved by each divergence rollback
    end: float = 1.0  # the share of the budget at which the run ends: less once a stall began the decay early
    corpus_digest: str = ""
    world_size: int = 1
    param_groups: list[dict[str, Any]] = field(default_factory=list)
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)  # "<i>.<key>" -> moment
    hidden: Optional[list[np.ndarray]] = None  # [h] or [h, c], each (layers, B, H) for all B streams
    rng_cpu: Optional[np.ndarray] = None
    rng_cuda: Optional[np.ndarray] = None

    def to_checkpoint(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(resume metadata, resume tensors) for save_checkpoint."""
        meta = {k: getattr(self, k) for k in _SCALAR_TYPES}  # the resume metadata, in this order
        tensors = {f"optim.{k}": v for k, v in self.optimizer.items()}
        for j, t in enumerate(self.hidden or []):
            tensors[f"state.{j}"] = t
        if self.rng_cpu is not None:
            tensors["rng.cpu"] = self.rng_cpu
        if self.rng_cuda is not None:
            tensors["rng.cuda"] = self.rng_cuda
        return meta, tensors

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> "RunState":
        """The state saved in a last.safetensors read with_resume=True; a CheckpointError if malformed."""
        r, t = ckpt.resume or {}, ckpt.resume_tensors
        scalars = {}
        for name, kinds in _SCALAR_TYPES.items():
            if name not in r:
                continue
            value = r[name]
            if not isinstance(value, kinds) or isinstance(value, bool) or (kinds is int and value < 0):
                raise CheckpointError(f"{ckpt.path}: the saved training state has a malformed {name!r}")
            scalars[name] = value
        if not 0.0 < scalars.get("end", 1.0) <= 1.0:
            raise CheckpointError(f"{ckpt.path}: the saved training state has a malformed 'end'")
        if not all(isinstance(g, dict) for g in scalars.get("param_groups", [])):
            raise CheckpointError(f"{ckpt.path}: the saved training state has malformed optimizer settings")
        c = ckpt.model_config
        hidden = None
        if "state.0" in t:
            hidden = [np.array(t.get(f"state.{j}", np.zeros(0))) for j in range(c.state_tensors)]
            if any(h.ndim != 3 or h.shape[0] != c.layers or h.shape[2] != c.hidden or h.dtype.kind != "f"
                   for h in hidden):
                raise CheckpointError(f"{ckpt.path}: the saved hidden state does not fit its model")
        if "rng.cpu" not in t or t["rng.cpu"].dtype != np.uint8:
            raise CheckpointError(f"{ckpt.path}: the saved training state lacks its random generator state")
        return cls(**scalars, optimizer={k[len("optim."):]: v for k, v in t.items() if k.startswith("optim.")},
                   hidden=hidden, rng_cpu=t["rng.cpu"], rng_cuda=t.get("rng.cuda"))


# The fields saved as the resume metadata (JSON), with the JSON types each accepts: RunState's
# fields of these annotations; the others (arrays) are saved as tensors.
_JSON_TYPES: dict[str, Any] = {"int": int, "float": (int, float), "str": str, "list[dict[str, Any]]": list}
_SCALAR_TYPES: dict[str, Any] = {f.name: _JSON_TYPES[str(f.type)] for f in fields(RunState) if str(f.type) in _JSON_TYPES}


def check_resumable(ckpt: Checkpoint, train_config: dict[str, Any]) -> None:
    """A UsageError unless `ckpt` holds training state and `train_config` keeps its data layout."""
    if ckpt.resume is None:
        raise UsageError(f"{ckpt.path} holds no training state (only last.safetensors does); cannot resume from it")
    for key in RESUME_FIXED:
        if key in ckpt.train_config and train_config[key] != ckpt.train_config[key]:
            was = ckpt.train_config[key]
            raise UsageError(
                f"`{key}` {train_config[key]} differs from the run being resumed "
                f"({'not given' if was is None else was}); a resumed run keeps its data layout, so drop the flag"
            )


def branches(ckpt: Checkpoint, out_dir: str | Path) -> bool:
    """Whether a run resumed from `ckpt` into `out_dir` goes on elsewhere than the run's own directory
    (a branch: the directory is then new to it, as to a new run)."""
    return Path(out_dir).resolve() != ckpt.path.resolve().parent


class RunDir:
    """The files of one run. `writes` is False on the other ranks under torchrun, and for the folds
    of a cross-validation (chargen.training.folds): they write nothing, not even the directory."""

    def __init__(self, path: str | Path, writes: bool = True):
        self.path, self.writes = Path(path), writes
        self._lock_fd: Optional[int] = None
        self._created: list[Path] = []

    def lock(self) -> None:
        """Become the directory's one writer (rank 0), or raise RunInUse naming the process that is.

        Creates the directory if needed, and nothing else: a refused run changes no file.
        """
        if not self.writes or self._lock_fd is not None:
            return
        import fcntl

        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot create the run directory {self.path} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunInUse(f"{self.path} is in use by another chargen train ({holder}); wait for it to end or "
                           f"stop it, or train into another `out`") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._lock_fd = fd
        self._created = missing  # removed again if the run fails before writing anything

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lock for the block; if the block fails before writing anything, leave no trace."""
        self.lock()
        try:
            yield
        except BaseException:
            self.unlock(failed=True)
            raise
        self.unlock()

    def unlock(self, failed: bool = False) -> None:
        """Release the lock. After a failure, directories this run created and left empty go too."""
        if self._lock_fd is None:
            return
        if failed and self._created and [p.name for p in self.path.iterdir()] == [LOCK]:
            (self.path / LOCK).unlink(missing_ok=True)
            for p in self._created:  # deepest first
                try:
                    p.rmdir()
                except OSError:
                    break
        os.close(self._lock_fd)  # closing the descriptor releases the flock
        self._lock_fd = None

    def refuse_early(self, overwrite: bool) -> None:
        """refuse_existing for a new run before it spends seconds measuring the machine or
        cross-validating: a run there in use by another process is RunInUse, as under the lock."""
        if self.writes and (self.path / LAST).exists() and not overwrite:
            with self.locked():
                self.refuse_existing(overwrite)

    def refuse_existing(self, overwrite: bool) -> None:
        # Rank 0 alone decides (the others would see the step-0 checkpoint it is about to write).
        if self.writes and (self.path / LAST).exists() and not overwrite:
            raise UsageError(f"{self.path} already holds a run; continue it with `resume` {self.path}, "
                             f"or pass `overwrite` or another `out`")

    def prepare(self) -> None:
        """Remove temp files of a process killed mid-write (they are useless; the lock says no
        other process is writing here)."""
        if not self.writes:
            return
        for name in ("*.safetensors", METRICS, CONFIG, LOSS_SVG):  # every file a run writes (atomically)
            for stale in self.path.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)

    def refuse_foreign_files(self) -> None:
        """A UsageError if the directory holds a file the run would write over that no chargen run
        wrote (`--out .` in a project with its own config.json, a best.safetensors of another tool's)."""
        if not self.writes:
            return
        foreign = [name for name, ours in _OURS.items()  # (a pipe or a device there: not read, and not ours)
                   if (self.path / name).exists() and not ((self.path / name).is_file() and ours(self.path / name))]
        if foreign:
            raise UsageError(f"{self.path} holds {', '.join(foreign)}, not written by chargen, which the run would "
                             f"replace; train into another `out` (a new or empty directory)")

    def refuse_reading_own(self, paths: list[str | Path]) -> None:
        """A UsageError if an input (a corpus, a held-out file) is one of the files the run writes:
        the run would replace it."""
        own = {(self.path / name).resolve() for name in (*_OURS, LOCK)}
        for p in paths:
            if p != "-" and Path(p).resolve() in own:
                raise UsageError(f"{p} is a file the run in {self.path} writes, and it would be replaced; "
                                 f"move it, or train into another `out`")

    def save(self, name: str, **checkpoint: Any) -> None:
        """save_checkpoint into this directory (see checkpoint.save_checkpoint for the keywords)."""
        if self.writes:
            save_checkpoint(self.path / name, **checkpoint)

    def write_config(self, resolved: dict[str, Any]) -> None:
        if self.writes:
            atomic_write(self.path / CONFIG, (json.dumps(resolved, indent=2) + "\n").encode())

    def read_metrics(self, up_to_step: int) -> list[dict[str, Any]]:
        """The evaluations recorded so far, up to the step a resumed run continues from."""
        path = self.path / METRICS
        if not path.exists():
            return []
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [m for m in records if m.get("step", 0) <= up_to_step]

    def write_metrics(self, records: list[dict[str, Any]], title: str) -> None:
        if self.writes:
            atomic_write(self.path / METRICS, "".join(json.dumps(m) + "\n" for m in records).encode())
            write_loss_curve(self.path, records, title)


def _json_with(path: Path, keys: set[str], first_line: bool = False) -> bool:
    """Whether the file (or its first line) is a JSON object with these keys."""
    try:
        with open(path, "rb") as f:
            text = f.readline() if first_line else f.read()
        value = json.loads(text)
    except (OSError, ValueError):
        return False
    return isinstance(value, dict) and keys <= value.keys()


def _chargen_svg(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"<svg") and b"chargen" in head


# The files a run writes (with its LOCK), each with how to tell one a chargen run wrote (RunDir.refuse_foreign_files).
_OURS = {BEST: is_chargen_checkpoint, LAST: is_chargen_checkpoint,
         CONFIG: lambda p: _json_with(p, {"corpus", "model", "train"}),
         METRICS: lambda p: _json_with(p, {"step"}, first_line=True) or p.stat().st_size == 0,
         LOSS_SVG: _chargen_svg}


def _read_holder(fd: int) -> str:
    """Who holds the lock, from the info its holder wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its details are not written yet"
