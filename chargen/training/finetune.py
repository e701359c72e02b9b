"""Starting a run from a trained model (`chargen train LIST --from CHECKPOINT`): torch-free.

The base model's architecture is kept; its vocabulary grows by the new corpus's characters.
A new character that has a stand-in among the old ones (`stand_in`: a Cyrillic letter's Latin
transliteration, an accented letter's bare letter, the other case of a known letter) starts as a
copy of it: its embedding row and its output row, so the network reads "Иван" as it reads "Ivan"
and predicts "и" where it would predict "i". One without starts from the mean embedding row (a
typical input) and an output row of zero weights. Either way growing is exact: the new rows'
output biases are set so low that, whatever the hidden state, all new characters together get
less than NEW_CHAR_MASS of the probability, so the log-probabilities of text in the old
vocabulary change by less than float32 can show (`grow_weights`, tested). At that level a new
character costs ~20 nats each time it appears, and AdamW moves a bias by about the learning rate
per step: thousands of steps to learn a new alphabet. So before the run's first step (and before
it is saved or evaluated) the output biases are calibrated (`calibrated_bias`): each new
character gets on average, over the contexts of the training text, its frequency there (a copied
row keeps its stand-in's dependence on the context). A run that keeps the base's labels
calibrates the new characters only, which shifts the old characters' log-probabilities by about
log(1 - the new ones' total frequency) and nothing more. A run without labels, which becomes the
model of its list alone, also calibrates the stand-ins that the list never uses: the Latin
letters behind a Cyrillic list's letters make way for their copies, while the line ends keep the
share the base gives them and the letters the list shares with the base keep their biases
(calibrating every character instead fits a short list's letter counts too closely:
docs/benchmarks.md, "A new script's letters start from their transliterations"). Characters the
new corpus lacks stay, so the model can still write them.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import unicodedata
from collections.abc import Container, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..config import SHAPE_KEYS, ModelConfig
from ..errors import UsageError
from ..tokenizer import Vocab

NEW_CHAR_MASS = 1e-8  # at most this much probability on all new characters together, before training
ARCHITECTURE = SHAPE_KEYS  # what a run from a model keeps of it
DEFAULT_FROM = "base"  # the bundled model a short list starts from (config.DEFAULT_FROM_MAX_LINES; checkpoint.BUNDLED)


@dataclass(frozen=True)
class Lineage:
    """Where a fine-tuned run started: recorded in every checkpoint it writes (info["from"])."""

    path: str
    sha256: str
    new_chars: int
    stand_ins: Optional[dict[str, str]] = None  # new character -> the old one it started as a copy of
    val_loss: Optional[float] = None  # the base model's loss on this run's validation text, before any step
    # A labelled base: the base label each new label (or an unlabelled list, "") starts from.
    start_labels: Optional[dict[str, str]] = None
    # Of those, the ones whose lines hold characters the base cannot read (a script it never saw):
    # they start from its largest label, not from the closest.
    start_unread: Optional[list[str]] = None

    def to_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "sha256": self.sha256, "new_chars": self.new_chars, "val_loss": self.val_loss}
        if self.stand_ins:
            out["stand_ins"] = self.stand_ins
        if self.start_labels:
            out["start_labels"] = self.start_labels
        if self.start_unread:
            out["start_unread"] = self.start_unread
        return out


def start_labels_text(starts: Mapping[str, str]) -> str:
    """Lineage.start_labels for people: the base label each new label (or an unlabelled list, "")
    starts from, "label it_IT:city" or "labels it_IT:city (places), el_GR:city (greek)"."""
    return ("labels " if len(starts) > 1 else "label ") + ", ".join(
        base if not new else f"{base} ({new})" for new, base in starts.items())


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


# Cyrillic letters (Russian, Ukrainian, Belarusian, Bulgarian, Serbian, Macedonian) -> the Latin
# letters that transliterate them, as Czech, Slovak, Slovene and Croatian spell the same sounds:
# the base model (chargen.checkpoint.BUNDLED) knows those letters from the names of places in
# those languages, and its corpus holds no Cyrillic (it is left out for benchmarks/finetune.py).
# One letter each; where a transliteration takes two (ю ju) the vowel. Where the base read the
# Cyrillic list of benchmarks/finetune.py better through another letter (ы i not y, ъ a not ă),
# that one (docs/benchmarks.md, "A new script's letters start from their transliterations").
# The other scripts the base knows (Greek, Arabic, Hebrew, Armenian, Georgian...) need none.
CYRILLIC_STAND_INS = dict(zip(
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюяєіїґўјљњћђџѕѓќ",
    "abvgdeežzijklmnoprstufhcčššaijeuaeiigujlnćđdzgk"))


def stand_in(char: str, known: Container[str]) -> Optional[str]:
    """The known character a new character `char` starts as a copy of, or None: its Latin
    transliteration (CYRILLIC_STAND_INS, in the same case), that letter without its accents, the
    character itself without its accents (é -> e), or its other case (Ə -> ə); the first known."""
    lower = char.lower()
    translit = CYRILLIC_STAND_INS.get(lower, "")
    if translit and char != lower:
        translit = translit.upper()
    candidates = [translit, unicodedata.normalize("NFKD", translit)[:1], unicodedata.normalize("NFKD", char)[:1],
                  char.swapcase()]
    return next((c for c in candidates if c and c != char and c in known), None)


def stand_ins(old: Vocab, new: Vocab) -> dict[str, str]:
    """Each character of `new` that `old` lacks -> its stand-in in `old` (those that have one)."""
    found = {c: stand_in(c, old.index) for c in new.chars if c not in old.index}
    return {c: t for c, t in found.items() if t is not None}


def grow_weights(weights: dict[str, np.ndarray], old: Vocab, new: Vocab,
                 copies: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The base weights for the vocabulary `new` (a superset of `old`, in any order), each new
    character of `copies` (`stand_ins(old, new)`) a copy of its stand-in."""
    missing = [c for c in old.chars if c not in new]
    if missing:
        raise ValueError(f"the new vocabulary drops {missing!r}")
    fresh = np.array([c not in old.index for c in new.chars])
    rows = np.array([old.index.get(copies.get(c, c), -1) for c in new.chars])  # the old row each id starts from
    alone = rows < 0  # new characters with no stand-in
    grown = dict(weights)
    emb, head_w, head_b = weights["embedding.weight"], weights["head.weight"], weights["head.bias"]
    grown["embedding.weight"] = np.where(alone[:, None], emb.mean(axis=0, keepdims=True), emb[rows]).astype(emb.dtype)
    grown["head.weight"] = np.where(alone[:, None], 0.0, head_w[rows]).astype(head_w.dtype)
    # Each new character gets at most NEW_CHAR_MASS / n_new. A copy's logit is its stand-in's
    # plus log(that share), so its probability is at most that share of its stand-in's. A row of
    # zero weights has its bias as logit, and every hidden unit lies in (-1, 1), so an old
    # logit is at least b_j - |w_j|_1: the largest such floor bounds the softmax's normaliser from
    # below, whatever the context.
    share = math.log(NEW_CHAR_MASS / max(int(fresh.sum()), 1))
    floor = float(np.max(head_b.astype(np.float64) - np.abs(head_w.astype(np.float64)).sum(axis=1)))
    bias = np.where(alone, floor, head_b[rows]) + np.where(fresh, share, 0.0)
    grown["head.bias"] = bias.astype(head_b.dtype)
    return grown


def calibrated_bias(logits: np.ndarray, bias: np.ndarray, fit: np.ndarray, counts: np.ndarray,
                    tolerance: float = 0.01, rounds: int = 100) -> np.ndarray:
    """Output biases under which each character of `fit` (a bool mask over ids) gets on average,
    over the contexts of `logits` ((T, V), computed with `bias`), its frequency in the training
    text (`counts` per id, plus a half: a character the text lacks gets a little), the others'
    biases unchanged. Those are the biases that make the text likeliest with the rest of the
    network fixed: at that optimum a softmax's mean prediction of each id whose bias is free
    equals the id's frequency. Found by iterative scaling until no bias moves by `tolerance`
    nats in a round: a start, which training moves on from. Each round adds to a free bias
    log(frequency / mean prediction), and log((1 - M) / (1 - F)) to all of them, where M and F
    are the free ids' mean predicted and wanted shares: in one context that is the exact answer
    (the fixed ids' logits stay, so the normaliser moves by what their share must lose), where
    the first term alone (generalised iterative scaling) converges slowly when the free ids take
    most of the mass: 49 rounds against 9 for 8,174 new CJK characters, 17 against 8 for the
    Cyrillic names of the README. On the Cyrillic list of benchmarks/finetune.py from the base
    that takes 8 rounds and 0.3 s."""
    freq = (counts.astype(np.float64) + 0.5) / (counts.sum() + 0.5 * len(counts))
    kept = float(freq[~fit].sum())  # 1 - F (0 where every id is free: then the term is a constant, and drops)
    z = logits.astype(np.float64)  # (T, V)
    shift = np.zeros(len(bias))
    for _ in range(rounds):
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        mean = p.mean(axis=0)  # (V,)
        held = math.log(max(float(mean[~fit].sum()), 1e-300) / kept) if kept > 0 else 0.0  # log((1 - M) / (1 - F))
        step = np.where(fit, np.log(freq) - np.log(mean) + held, 0.0)
        shift += step
        z += step
        if np.abs(step).max() < tolerance:
            break
    return (bias.astype(np.float64) + shift).astype(bias.dtype)


# --- the start states of a labelled run from a model ---------------------------------------------

CLOSEST_LINES = 200  # lines of a new label that choose the base label it starts from
SCREEN_LINES, SCREEN_LABELS = 24, 16  # the first lines, scored under every label, keep this many labels


class ClosestLabels:
    """Which of a labelled base model's labels lines are likeliest under, per character: a new
    label (or an unlabelled list) starts from that label's start state. The cost is scoring lines
    under every label (248 in the bundled base then: 7.7 s for 200 names on a 2-core EPYC), so the
    lines are screened: the first SCREEN_LINES of them (a random sample) under every label keep
    the SCREEN_LABELS likeliest, and the rest are scored under those alone (the same choice as
    every line under every label for 98-100% of random lists: docs/benchmarks.md, "The closest
    label screened"). A line scored under the labels asked for is not scored again by the same
    object, so the folds of a cross-validation and the run after them (chargen.training.folds)
    share the work."""

    def __init__(self, base):
        self.base = base
        self.starts = [[t[k] for t in base.start_state] for k in range(base.model_config.n_labels)]
        self.newline = base.vocab.index["\n"]
        self.known: dict[str, np.ndarray] = {}  # line -> its NLL under each label (nan: not scored yet)

    @functools.cached_property
    def scorer(self):
        """The base's numpy network, built when a line is first scored (a run whose labels the base
        has all scores none)."""
        from ..evaluation import NumpyScorer  # numpy only
        from ..npmodel import NumpyCharRNN

        return NumpyScorer(NumpyCharRNN(self.base.model_config, self.base.weights))

    def label_for(self, lines: list[str], copies: Mapping[str, str]) -> Optional[int]:
        """The label (its index) for `lines`, new characters read as their stand-ins (`copies`,
        from `stand_ins`: the network starts by reading them so); lines with other characters the
        base does not know are left out; with none left, None (nothing says which is closest)."""
        chosen = random.Random(0).sample(lines, min(CLOSEST_LINES, len(lines)))  # (the lines come sorted)
        as_read = str.maketrans(dict(copies))
        chosen = [line for line in (line.translate(as_read) for line in chosen) if not self.base.vocab.unknown_chars(line)]
        if not chosen:
            return None
        every = np.arange(len(self.starts))
        screened = np.argsort(self.nlls(chosen[:SCREEN_LINES], every).sum(axis=0), kind="stable")[:SCREEN_LABELS]
        # (the same characters under every label: sums compare as means)
        return int(screened[np.argmin(self.nlls(chosen, screened).sum(axis=0))])

    def nlls(self, lines: list[str], labels: np.ndarray) -> np.ndarray:
        """(len(lines), len(labels)): each line's NLL (nats, its newline included) under each
        label, scoring only the lines not yet scored under all of them."""
        from ..evaluation import mixture_nlls

        todo = [line for line in dict.fromkeys(lines)
                if np.isnan(self.known.setdefault(line, np.full(len(self.starts), np.nan))[labels]).any()]
        if todo:
            ids = [np.append(self.base.vocab.encode(line).astype(np.int64), self.newline) for line in todo]
            _, per = mixture_nlls(self.scorer, ids, [self.starts[k] for k in labels], np.full(len(labels), 1 / len(labels)),
                                  self.newline)
            for line, row in zip(todo, per):
                self.known[line][labels] = row
        return np.stack([self.known[line][labels] for line in lines])


def start_weights(base, config: ModelConfig, names: Optional[list[str]], lines_of: dict[str, list[str]],
                  copies: Mapping[str, str], closest: Optional[ClosestLabels] = None
                  ) -> tuple[np.ndarray, dict[str, str], list[str]]:
    """The "start" weight of a run from `base`, of `config`'s shape, which base label each new
    label (an unlabelled run: "") starts from, and which of those the base cannot read. A label the
    base has keeps its start state (so its distribution is unchanged until training moves it); a
    new label starts from the base's closest label (ClosestLabels on its lines, new characters read
    as their `copies`; pass `closest` to share its scores between runs), or from its largest label
    when no line of it is one the base can read (those are the list returned), or from the base's
    one start state when the base has no labels. An unlabelled run from a labelled base starts from
    its corpus's closest label (`lines_of[""]`)."""
    shape = config.weight_shapes()["start"]
    if base.start_state is None:
        return np.zeros(shape, np.float32), {}, []
    stacked = np.stack(base.start_state)  # (S, layers, H), or (S, labels, layers, H) for a labelled base
    if not base.model_config.n_labels:
        return np.ascontiguousarray(np.broadcast_to(stacked, shape), dtype=np.float32), {}, []
    per_label = np.moveaxis(stacked, 1, 0)  # (labels, S, layers, H)
    closest = closest or ClosestLabels(base)
    index = {name: k for k, name in enumerate(base.labels)}
    new = [""] if not config.n_labels else [name for name in names if name not in index]
    found = {name: closest.label_for(lines_of.get(name, []), copies) for name in new}
    unread = [name for name, k in found.items() if k is None]
    largest = int(np.argmax(base.label_counts))
    rows_of = {**index, **{name: largest if k is None else k for name, k in found.items()}}
    starts = {name: base.labels[rows_of[name]] for name in new}
    if not config.n_labels:
        return per_label[rows_of[""]].astype(np.float32), starts, unread
    return np.ascontiguousarray(per_label[[rows_of[name] for name in names]], dtype=np.float32), starts, unread
