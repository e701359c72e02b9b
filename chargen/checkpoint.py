"""Checkpoints: one safetensors file each, written atomically, readable without torch.

Layout of a chargen checkpoint (format version 1):

    tensors   model weights, float32, named as in CharRNN.state_dict() ("embedding.weight",
              "rnn.weight_ih_l0", ..., "head.bias");
              "start_state.<j>": the model's typical state at a line end, (layers, hidden) each,
              h then c for an LSTM; sampling and eval start from it (a labelled model's are
              (labels, layers, hidden): one per label, whose names, training line counts and
              held-out losses are in info["labels"]);
              "data.lines": the training corpus's distinct lines as UTF-8 bytes joined by "\n"
              (line-oriented corpora only; what `sample --novel` checks against);
              "resume.*": in last.safetensors only, what resuming needs: optimizer moments
              ("resume.optim.<i>.<key>"), the carried hidden state ("resume.state.<j>") and the
              RNG states ("resume.rng.cpu", "resume.rng.cuda").
    metadata  strings: "format" = "chargen", "format_version", "model_config" (JSON),
              "train_config" (JSON), "vocab" (tokenizers JSON), "info" (JSON: steps, characters
              seen, losses, corpus, versions), "resume" (JSON, last.safetensors only).

Nothing here is ever unpickled: safetensors holds raw tensors and a JSON header.
"""

from __future__ import annotations

import difflib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save

from .config import ModelConfig
from .errors import CheckpointError, ChargenError, cannot_read
from .files import atomic_write
from .tokenizer import Vocab

FORMAT = "chargen"
FORMAT_VERSION = 1
BEST = "best.safetensors"
LAST = "last.safetensors"
METRICS = "metrics.jsonl"
CONFIG = "config.json"


@dataclass
class Checkpoint:
    path: Path
    model_config: ModelConfig
    vocab: Vocab
    weights: dict[str, np.ndarray]
    train_config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    resume: Optional[dict[str, Any]] = None
    resume_tensors: dict[str, np.ndarray] = field(default_factory=dict)
    training_lines: Optional[list[str]] = None
    start_state: Optional[list[np.ndarray]] = None  # [h] or [h, c], each (layers, hidden); labelled: (labels, ...)

    @property
    def line_oriented(self) -> bool:
        return bool(self.info.get("line_oriented", False))

    @property
    def labels(self) -> Optional[list[str]]:
        """A labelled model's labels, in index order; None for a model without."""
        return list(self.info["labels"]["names"]) if self.model_config.n_labels else None

    @property
    def label_counts(self) -> Optional[list[int]]:
        """How many training lines each label had (a run from a labelled model: with that model's)."""
        return list(self.info["labels"]["lines"]) if self.model_config.n_labels else None

    @property
    def label_default(self) -> Optional[list[int]]:
        """What a labelled model draws its labels in proportion to when asked for none: the lines of
        its own training run. A run from a labelled model (`--labels file --from base`) trained its
        own labels only, so it draws those; the labels it inherited are there to ask for."""
        if not self.model_config.n_labels:
            return None
        lines, inherited = self.info["labels"]["lines"], self.info["labels"].get("inherited")
        own = [c - i for c, i in zip(lines, inherited)] if inherited is not None else list(lines)
        return own if any(own) else list(lines)

    def describe(self) -> dict[str, Any]:
        """The facts `chargen info` shows (and a server's model list): JSON-ready."""
        meta = self.info
        return {
            "path": str(self.path),
            "model": self.model_config.to_dict(),
            "parameters": self.model_config.parameters,
            "vocab_size": len(self.vocab),
            "vocab_preview": self.vocab.preview(),
            "corpus": meta.get("corpus"),
            "line_oriented": self.line_oriented,
            "training_lines": len(self.training_lines) if self.training_lines is not None else 0,
            "labels": self._labels_facts(),
            "steps": meta.get("step"),
            "chars_seen": meta.get("chars_seen"),
            "val_loss": meta.get("val_loss"),
            "best_val_loss": meta.get("best_val_loss"),
            "from": meta.get("from"),  # a fine-tuned run: the model it started from, and its loss before
            "train_config": self.train_config,
            "device": meta.get("device"),
            "precision": meta.get("precision"),
            "chargen_version": meta.get("chargen_version"),
            "torch_version": meta.get("torch_version"),
            "saved_at": meta.get("saved_at"),
        }

    @property
    def own_labels(self) -> Optional[list[str]]:
        """A model adapted from a labelled one: the labels it draws with no label (label_default
        where that is not every label's lines); None for any other model."""
        default = self.label_default
        if default is None or default == self.label_counts:
            return None
        return [name for name, w in zip(self.labels, default) if w]

    def _labels_facts(self) -> Optional[dict[str, Any]]:
        """A labelled model's labels: names, training lines and held-out loss of each, and "own"
        (own_labels) where there are."""
        if not self.model_config.n_labels:
            return None
        own = self.own_labels
        return {**self.info["labels"], **({"own": own} if own else {})}

    def public_facts(self) -> dict[str, Any]:
        """describe() without file paths (a model it started from by its name, checkpoint_name):
        what a server's model list and an exported page show."""
        facts = self.describe()
        facts.pop("path", None)
        base = facts.get("from")
        if isinstance(base, dict) and base.get("path"):
            facts["from"] = {"name": checkpoint_name(Path(str(base["path"]))),
                             **{k: v for k, v in base.items() if k != "path"}}
        return facts


# --- writing ----------------------------------------------------------------------------------


def save_checkpoint(
    path: Path,
    *,
    weights: dict[str, np.ndarray],
    model_config: ModelConfig,
    vocab_json: str,
    train_config: dict[str, Any],
    info: dict[str, Any],
    lines_blob: Optional[np.ndarray] = None,
    resume: Optional[dict[str, Any]] = None,
    resume_tensors: Optional[dict[str, np.ndarray]] = None,
    start_state: Optional[list[np.ndarray]] = None,
) -> None:
    tensors: dict[str, np.ndarray] = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    for j, t in enumerate(start_state or []):
        tensors[f"start_state.{j}"] = np.ascontiguousarray(t, dtype=np.float32)
    if lines_blob is not None:
        tensors["data.lines"] = np.ascontiguousarray(lines_blob, dtype=np.uint8)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_config": json.dumps(model_config.to_dict()),
        "train_config": json.dumps(train_config),
        "vocab": vocab_json,
        "info": json.dumps(info),
    }
    if resume is not None:
        metadata["resume"] = json.dumps(resume)
        for k, v in (resume_tensors or {}).items():
            tensors[f"resume.{k}"] = np.ascontiguousarray(v)
    atomic_write(Path(path), save(tensors, metadata=metadata))


def encode_lines(lines: list[str]) -> np.ndarray:
    return np.frombuffer("\n".join(lines).encode("utf-8"), dtype=np.uint8).copy()


# --- reading ----------------------------------------------------------------------------------


def resolve_checkpoint(path: str | os.PathLike, prefer: str = BEST) -> Path:
    """A run directory means its best (or last) checkpoint; a file means itself."""
    _not_empty(path)
    p = Path(path)
    if p.is_dir():
        order = [prefer, LAST if prefer == BEST else BEST]
        for name in order:
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p} is a directory without {order[0]} or {order[1]}; is it a chargen run directory?")
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist{_did_you_mean(p)}")
    return p


def _did_you_mean(p: Path) -> str:
    """What a checkpoint path that is not there likely meant: the run `chargen train` wrote under
    checkpoints/ (`-c shakespeare` for checkpoints/shakespeare), a near name beside it (a typo), or
    a bundled model's name."""
    if not p.is_absolute() and len(p.parts) == 1 and (Path("checkpoints") / p).exists():
        return f"; did you mean checkpoints/{p} (where chargen train writes its runs)?"
    try:
        beside = [c.name for _, c in zip(range(1000), p.parent.iterdir())] if p.parent.is_dir() else []
    except OSError:
        beside = []
    bundled = list(BUNDLED) if len(p.parts) == 1 else []
    close = difflib.get_close_matches(p.name, beside + bundled, n=1, cutoff=0.75)
    if not close or close[0] == str(p):  # (a bundled model's own name, where a path is read)
        return ""
    return f"; did you mean {close[0] if close[0] in bundled else p.parent / close[0]}?"


def _sniff(path: Path, head: bytes, size: int) -> str:
    """Why this is not a safetensors file, or "" if it looks like one (8-byte length, then '{')."""
    if not head:
        return f"{path} is empty, not a chargen checkpoint"
    if head.startswith(b"PK\x03\x04"):  # before the header test: as a length these bytes say 67 MB of JSON
        return (f"{path} is a zip archive (such as a torch.save file), not a chargen checkpoint; "
                f"chargen reads only safetensors and never unpickles")
    if len(head) >= 9 and head[8:9] == b"{":
        if int.from_bytes(head[:8], "little") > size - 8:
            return f"{path} is truncated or corrupt (its safetensors header runs past the end of the file)"
        return ""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return f"{path} is a pickle file, not a chargen checkpoint; chargen never unpickles"
    return f"{path} is not a safetensors file, or it is truncated (no safetensors header)"


def is_chargen_checkpoint(path: Path) -> bool:
    """Whether `path` is a safetensors file whose metadata says chargen wrote it (its header alone is read)."""
    if not holds_safetensors(path):
        return False
    try:
        with safe_open(str(path), framework="numpy") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # (safetensors raises its own types for a bad header)
        return False


def holds_safetensors(path: Path) -> bool:
    """Whether a file is there whose first bytes are a safetensors header (a checkpoint, likely).
    Only a regular file is opened: reading a pipe (an export to `>(gzip > x)`'s /dev/fd/63, a FIFO)
    would wait for ever on its writer, this process."""
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            head = f.read(16)
        return head != b"" and _sniff(path, head, path.stat().st_size) == ""
    except OSError:
        return False


def _check_version(p: Path, metadata: dict[str, str]) -> None:
    """A CheckpointError unless the format version is one this chargen reads."""
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{p} has a malformed format version {metadata.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{p} is chargen checkpoint format {version}, newer than this chargen reads ({FORMAT_VERSION}); upgrade chargen"
        )
    if version < 1:
        raise CheckpointError(f"{p} has an invalid format version {version}")


def read_checkpoint(path: str | os.PathLike, *, prefer: str = BEST, with_resume: bool = False) -> Checkpoint:
    """Load and validate a checkpoint with numpy alone. Any defect is a CheckpointError."""
    p = resolve_checkpoint(path, prefer)
    metadata, tensors = _read_file(p, with_resume)
    _check_version(p, metadata)
    model_config = _model_config(p, metadata)
    vocab = Vocab.from_json(metadata.get("vocab") or "")
    if len(vocab) != model_config.vocab_size:
        raise CheckpointError(f"{p}: vocabulary has {len(vocab)} characters but the model expects {model_config.vocab_size}")
    info = _json_field(p, metadata, "info", required=False) or {}
    return Checkpoint(
        path=p,
        model_config=model_config,
        vocab=vocab,
        weights=_weights(p, tensors, model_config),
        train_config=_json_field(p, metadata, "train_config", required=False) or {},
        info=info,
        resume=_json_field(p, metadata, "resume", required=False) if with_resume else None,
        resume_tensors={n[len("resume."):]: t for n, t in tensors.items() if n.startswith("resume.")},
        training_lines=_training_lines(p, tensors),
        start_state=_start_state(p, tensors, model_config, info),
    )


def _in_a_run(p: Path) -> str:
    """For a file that is no checkpoint beside a run's checkpoints (its config.json, its curve):
    what to pass instead."""
    run = p.parent
    if p.name in (BEST, LAST) or not ((run / BEST).exists() or (run / LAST).exists()):
        return ""
    return f"; pass its run directory {run} (its best checkpoint) or {run / LAST}"


def _read_file(p: Path, with_resume: bool) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """A chargen safetensors file's metadata and tensors (the resume.* ones only `with_resume`),
    after its first bytes say it can be one."""
    try:
        with open(p, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # (read, a pipe's header would be gone)
                raise CheckpointError(f"{p} is a pipe or a device, not a file; a checkpoint is read from a "
                                      f"file (save it to one first)")
            head = f.read(16)
        size = p.stat().st_size
    except IsADirectoryError:
        raise CheckpointError(f"{p} is a directory") from None
    except OSError as exc:
        raise CheckpointError(cannot_read(p, exc)) from None
    problem = _sniff(p, head, size)
    if problem:
        raise CheckpointError(problem + _in_a_run(p))
    try:
        with safe_open(str(p), framework="numpy") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise CheckpointError(f"{p} is a safetensors file but not a chargen checkpoint (no chargen metadata)")
            return metadata, {n: f.get_tensor(n) for n in f.keys() if with_resume or not n.startswith("resume.")}
    except ChargenError:
        raise
    except Exception as exc:  # safetensors raises its own error types, or OSError, for bad files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{p} is corrupt or not a safetensors file ({msg})") from None


def _json_field(p: Path, metadata: dict[str, str], key: str, required: bool = True) -> Any:
    """A metadata entry holding a JSON object; None if absent and not `required`."""
    raw = metadata.get(key)
    if raw is None:
        if required:
            raise CheckpointError(f"{p} lacks the {key!r} metadata")
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{p} has malformed {key!r} metadata (not JSON)") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{p} has malformed {key!r} metadata (not a JSON object)")
    return value


def _model_config(p: Path, metadata: dict[str, str]) -> ModelConfig:
    try:
        return ModelConfig.from_dict(_json_field(p, metadata, "model_config"))
    except CheckpointError:
        raise
    except (ChargenError, TypeError) as exc:
        raise CheckpointError(f"{p} has an invalid model config ({exc})") from None


def _weights(p: Path, tensors: dict[str, np.ndarray], model_config: ModelConfig) -> dict[str, np.ndarray]:
    """The network's tensors, each of the shape its config says, in float32."""
    weights = {}
    for name, shape in model_config.weight_shapes().items():
        if name not in tensors:
            raise CheckpointError(f"{p} lacks the tensor {name!r}")
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{p}: tensor {name!r} has shape {tuple(t.shape)}, expected {shape} for its config")
        weights[name] = t if t.dtype == np.float32 else t.astype(np.float32)
    return weights


def _training_lines(p: Path, tensors: dict[str, np.ndarray]) -> Optional[list[str]]:
    """The training lines a line-oriented model stores (for --novel), if it does."""
    if "data.lines" not in tensors:
        return None
    try:
        blob = tensors["data.lines"].tobytes().decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{p}: the stored training lines are not UTF-8") from None
    return blob.split("\n") if blob else []


def _start_state(p: Path, tensors: dict[str, np.ndarray], model_config: ModelConfig,
                 info: dict[str, Any]) -> Optional[list[np.ndarray]]:
    """The stored start state ([h] or [h, c], each (layers, hidden), or (labels, layers, hidden) for a
    labelled model, which must also list its labels in info); None if there is none."""
    start_state = None
    n_state = model_config.state_tensors
    if all(f"start_state.{j}" in tensors for j in range(n_state)):
        start_state = [tensors[f"start_state.{j}"].astype(np.float32) for j in range(n_state)]
        shape = ((model_config.n_labels,) if model_config.n_labels else ()) + (model_config.layers, model_config.hidden)
        if any(t.shape != shape for t in start_state):
            raise CheckpointError(f"{p}: the stored start state has the wrong shape for its config")
    if model_config.n_labels:
        if not _labels_ok(info.get("labels"), model_config.n_labels) or start_state is None:
            raise CheckpointError(f"{p}: a labelled model without its {model_config.n_labels} labels' names, line "
                                  f"counts and start states")
    return start_state


def _labels_ok(labels: Any, n: int) -> bool:
    """Whether info["labels"] holds n distinct names and n line counts (not all 0), and the counts
    a run from a labelled model inherited from it, if any, each at most its label's count."""
    def counts(v: Any) -> bool:
        return isinstance(v, list) and len(v) == n and all(type(c) is int and c >= 0 for c in v)

    if not (isinstance(labels, dict) and isinstance(labels.get("names"), list) and len(set(labels["names"])) == n
            and all(isinstance(name, str) for name in labels["names"]) and counts(labels.get("lines"))
            and any(labels["lines"])):
        return False
    inherited = labels.get("inherited")
    return inherited is None or (counts(inherited) and all(i <= c for i, c in zip(inherited, labels["lines"])))


# --- the bundled models -----------------------------------------------------------------------

ENV_CHECKPOINT = "CHARGEN_CHECKPOINT"
# The bundled models, by the names a user gives them (`-c base`, `--from names`): `names` is the
# default for sampling (US first names, small and fast); `base` (names of many languages and
# kinds) is what short lists are adapted from (checkpoints/README.md).
BUNDLED = {"names": "names.safetensors", "base": "base.safetensors"}


def checkpoint_name(path: Path) -> str:
    """A checkpoint file's short name: its run directory's for a run's best or last checkpoint
    (runs/us-names/best.safetensors: us-names), else the file's own (base.safetensors: base)."""
    return path.parent.name if path.name in (BEST, LAST) else path.stem


def bundled_checkpoint(name: str = "names") -> Path:
    """A bundled model: inside the installed package, or in the source tree's checkpoints/."""
    here = Path(__file__).resolve().parent
    file = BUNDLED[name]
    for candidate in (here / "_bundled" / file, here.parent / "checkpoints" / file):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"the bundled model {file} is missing from this install; pass `checkpoint`")


def _not_empty(path: str | os.PathLike) -> None:
    if not os.fspath(path):  # (Path("") is the current directory)
        raise CheckpointError("the checkpoint's path is empty: name a checkpoint, a run directory or a bundled model")


def checkpoint_path(spec: str | os.PathLike) -> Path:
    """A checkpoint or run directory given by path, or a bundled model by its name (`names`,
    `base`) when no file of that name is here."""
    _not_empty(spec)
    path = Path(spec)
    if str(spec) in BUNDLED and not path.exists():
        return bundled_checkpoint(str(spec))
    return path


def default_checkpoint() -> Path:
    """$CHARGEN_CHECKPOINT's model, else the bundled names model (one a user may have forgotten
    setting: a path that is not there says where it came from)."""
    env = os.environ.get(ENV_CHECKPOINT)
    if not env:
        return bundled_checkpoint()
    path = checkpoint_path(env)
    if not path.exists():
        raise CheckpointError(f"${ENV_CHECKPOINT} is {env}, which does not exist; unset it for the bundled names "
                              f"model, or name a checkpoint")
    return path
