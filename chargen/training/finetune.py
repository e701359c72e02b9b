"""Starting a run from a trained model (`chargen train LIST --from CHECKPOINT`): torch-free.

The base model's architecture is kept; its vocabulary grows by the new corpus's characters.
Growing is exact: each new character gets an embedding row (the mean of the old ones: a
typical input) and an output row with zero weights and a bias so low that, whatever the hidden
state, all new characters together get less than NEW_CHAR_MASS of the probability, so the
log-probabilities of text in the old vocabulary change by less than float32 can show
(`grow_weights`, tested). At that level a new character costs ~20 nats each time it appears,
and AdamW moves a bias by about the learning rate per step: thousands of steps to learn a new
alphabet. So before the run's first step (and before it is saved or evaluated) the new rows'
biases are calibrated (`calibrated_bias`): each new character starts at its frequency in the
training text, in the model's typical context, which shifts the old characters' log-probabilities
by log(1 - that total frequency) and nothing more. Characters the new corpus lacks stay, so the
model can still write them.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..config import SHAPE_KEYS, ModelConfig
from ..errors import UsageError
from ..tokenizer import Vocab

NEW_CHAR_MASS = 1e-8  # at most this much probability on all new characters together, before training
ARCHITECTURE = SHAPE_KEYS  # what a run from a model keeps of it
# Line-oriented corpora of at most this many lines start from a bundled model by default: the
# base model (names of many languages and kinds), which beat training from scratch on lists up
# to this size (benchmarks/finetune.py; docs/benchmarks.md, "Adapting the broad base model").
DEFAULT_FROM_MAX_LINES = 5000
DEFAULT_FROM = "base"  # the bundled model they start from (chargen.checkpoint.BUNDLED)


@dataclass(frozen=True)
class Lineage:
    """Where a fine-tuned run started: recorded in every checkpoint it writes (info["from"])."""

    path: str
    sha256: str
    new_chars: int
    val_loss: Optional[float] = None  # the base model's loss on this run's validation text, before any step
    # A labelled base: the base label each new label (or an unlabelled list, "") starts from.
    start_labels: Optional[dict[str, str]] = None

    def to_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "sha256": self.sha256, "new_chars": self.new_chars, "val_loss": self.val_loss}
        if self.start_labels:
            out["start_labels"] = self.start_labels
        return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_architecture(base: ModelConfig, given: dict[str, Any], base_path: Path) -> None:
    """A flag that contradicts the base model's shape is an error naming both values."""
    for key in ARCHITECTURE:
        if key in given and given[key] != getattr(base, key):
            raise UsageError(f"`{key}` {given[key]} contradicts the model you start from ({base_path}: "
                             f"{key} {getattr(base, key)}); drop `{key}`, the shape comes from `start_from`")


def grow_weights(weights: dict[str, np.ndarray], old: Vocab, new: Vocab) -> dict[str, np.ndarray]:
    """The base weights for the vocabulary `new` (a superset of `old`, in any order)."""
    missing = [c for c in old.chars if c not in new]
    if missing:
        raise ValueError(f"the new vocabulary drops {missing!r}")
    rows = np.array([old.index.get(c, -1) for c in new.chars])  # old row of each new id, -1 if new
    fresh = rows < 0
    grown = dict(weights)
    emb, head_w, head_b = weights["embedding.weight"], weights["head.weight"], weights["head.bias"]
    grown["embedding.weight"] = np.where(fresh[:, None], emb.mean(axis=0, keepdims=True), emb[rows]).astype(emb.dtype)
    grown["head.weight"] = np.where(fresh[:, None], 0.0, head_w[rows]).astype(head_w.dtype)
    # Every hidden unit lies in (-1, 1), so an old logit is at least b_j - |w_j|_1: the largest
    # such floor bounds the softmax's normaliser from below, whatever the context.
    floor = float(np.max(head_b.astype(np.float64) - np.abs(head_w.astype(np.float64)).sum(axis=1)))
    n_new = int(fresh.sum())
    new_bias = floor + math.log(NEW_CHAR_MASS / max(n_new, 1))
    grown["head.bias"] = np.where(fresh, new_bias, head_b[rows]).astype(head_b.dtype)
    return grown


def calibrated_bias(head_bias: np.ndarray, fresh: np.ndarray, counts: np.ndarray, old_lse: float) -> np.ndarray:
    """Output biases where each new character (`fresh`, a bool mask) gets about its frequency in
    the training text (`counts` per id): with zero output weights its logit is its bias, and
    `old_lse` is the old characters' mean log-normaliser over real contexts, so
    p(new c) = f_c needs b_c = log f_c + old_lse - log(1 - sum of new f)."""
    freq = (counts.astype(np.float64) + 0.5) / (counts.sum() + 0.5 * len(counts))
    new_total = float(freq[fresh].sum())
    bias = head_bias.astype(np.float64).copy()
    bias[fresh] = np.log(freq[fresh]) + old_lse - math.log(max(1.0 - new_total, 1e-3))
    return bias.astype(head_bias.dtype)


# --- the start states of a labelled run from a model ---------------------------------------------

CLOSEST_LINES = 200  # lines of a new label scored under each of the base model's labels


def closest_label(base, lines: list[str]) -> int:
    """The base model's label (its index) under which `lines` are likeliest per character: a new
    label starts from its start state (base: a labelled Checkpoint). Lines with characters the
    base does not know are left out; with none left, the label with the most training lines."""
    from ..evaluation import NumpyScorer, mixture_nlls  # numpy only
    from ..npmodel import NumpyCharRNN

    newline = base.vocab.index["\n"]
    chosen = random.Random(0).sample(lines, min(CLOSEST_LINES, len(lines)))  # (the lines come sorted)
    ids = [np.append(base.vocab.encode(line).astype(np.int64), newline)
           for line in chosen if not base.vocab.unknown_chars(line)]
    if not ids:
        return int(np.argmax(base.label_counts))
    scorer = NumpyScorer(NumpyCharRNN(base.model_config, base.weights))
    n = base.model_config.n_labels
    _, per = mixture_nlls(scorer, ids, [[t[k] for t in base.start_state] for k in range(n)], np.full(n, 1 / n), newline)
    return int(np.argmin(per.sum(axis=0)))  # (the same characters under every label: sums compare as means)


def start_weights(base, config: ModelConfig, names: Optional[list[str]],
                  lines_of: dict[str, list[str]]) -> tuple[np.ndarray, dict[str, str]]:
    """The "start" weight of a run from `base`, of `config`'s shape, and which base label each new
    label (an unlabelled run: "") starts from. A label the base has keeps its start state (so its
    distribution is unchanged until training moves it); a new label starts from the base's closest
    label (closest_label on its lines), or from the base's one start state when the base has no
    labels. An unlabelled run from a labelled base starts from its corpus's closest label
    (`lines_of[""]`)."""
    shape = config.weight_shapes()["start"]
    if base.start_state is None:
        return np.zeros(shape, np.float32), {}
    stacked = np.stack(base.start_state)  # (S, layers, H), or (S, labels, layers, H) for a labelled base
    if not base.model_config.n_labels:
        return np.ascontiguousarray(np.broadcast_to(stacked, shape), dtype=np.float32), {}
    per_label = np.moveaxis(stacked, 1, 0)  # (labels, S, layers, H)
    if not config.n_labels:
        k = closest_label(base, lines_of.get("", []))
        return per_label[k].astype(np.float32), {"": base.labels[k]}
    index = {name: k for k, name in enumerate(base.labels)}
    rows = [index[name] if name in index else closest_label(base, lines_of.get(name, [])) for name in names]
    starts = {name: base.labels[k] for name, k in zip(names, rows) if name not in index}
    return np.ascontiguousarray(per_label[rows], dtype=np.float32), starts
