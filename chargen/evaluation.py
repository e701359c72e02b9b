r"""The two losses chargen reports, defined once, computed by torch or by numpy.

Training's validation, `chargen eval` and `Model.eval` all go through `stream_sums` and
`line_sums`; only the scorer differs: `TorchScorer` (chargen.training.scorer) runs a CharRNN over whole windows (training,
the torch backend), `NumpyScorer` steps the numpy twin a character at a time (`chargen eval`
without torch). Both return sums of negative log-likelihood in nats, and their count, so that
shares of the text scored by several processes under torchrun add up.

    stream loss (prose, code)   the text laid out in S parallel streams (S = min(32, (N-1) // T),
                                each stream at least one window of T = seq_len long), read from
                                the zero state as training starts its streams, state carried
                                from window to window; every character but the first of each
                                stream is predicted. Characters past S * (N // S) are left out.

    line loss (lists)           each line on its own, from the model's start-of-line state:
                                read "\n", then predict every character of the line and the
                                newline that ends it, exactly as a line sample is drawn.
                                Carrying the state over from the previous (unrelated) line
                                would flatter the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import numpy as np

from .errors import UsageError
from .sampling import parallel
from .sampling.engine import log_softmax
from .sampling.prefixes import distinct
from .training.data import PAD, line_ids, padded_lines  # PAD: the target id of padding, not scored

EVAL_STREAMS = 32  # streams of the stream loss
LINE_BATCH = 512  # lines scored together (sorted by length, so padding stays small)

Progress = Optional[Callable[[float], None]]  # told the share of the work done so far, 0 to 1, as it goes


class Scorer(Protocol):
    """What the losses need of a network: a state for `rows` rows, and the summed NLL of a window."""

    def initial(self, start_state: Optional[list[np.ndarray]], rows: int) -> Any:
        """The zero state (start_state None), or start_state ([h] or [h, c], each (layers, H)) for every row."""

    def score(self, inputs: np.ndarray, targets: np.ndarray, state: Any) -> tuple[Any, Any]:
        """inputs, targets (B, T) int64, PAD where not scored -> (summed NLL, the state after the window)."""


def stream_sums(scorer: Scorer, ids: np.ndarray, seq_len: int, streams: int = EVAL_STREAMS,
                progress: Progress = None) -> tuple[float, int]:
    """The stream loss of `ids` as (summed NLL, characters scored)."""
    n = len(ids)
    if n < 2:
        return 0.0, 0
    streams = max(1, min(streams, (n - 1) // max(seq_len, 1)))
    length = n // streams
    data = np.asarray(ids[: streams * length], dtype=np.int64).reshape(streams, length)  # (S, L)
    state = scorer.initial(None, streams)
    total: Any = 0.0
    count = 0
    for start in range(0, length - 1, seq_len):
        y = data[:, start + 1 : start + seq_len + 1]  # (S, T): the next character of each input
        x = data[:, start : start + y.shape[1]]
        nll, state = scorer.score(x, y, state)
        total = total + nll
        count += y.size
        if progress is not None:
            progress((start + y.shape[1]) / (length - 1))
    return float(total), count


def line_batches(lines: list[np.ndarray], newline_id: int, batch: int = LINE_BATCH):
    """Batches of lines of similar length, as (which lines, inputs (B, W), targets (B, W)) in the
    layout of every line loss (training's too: chargen.training.data.padded_lines): "\n" then the
    line in, the line then its newline out, PAD after (as an input: the newline)."""
    order = sorted(range(len(lines)), key=lambda i: len(lines[i]))  # similar lengths batch together
    for b0 in range(0, len(order), batch):
        which = order[b0 : b0 + batch]
        group = [lines[i] for i in which]  # each ends with its newline
        sizes = np.array([len(g) for g in group], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        seq = padded_lines(np.concatenate(group), starts, sizes - 1, newline_id, np.int64)  # (B, W + 1)
        inputs, targets = seq[:, :-1], seq[:, 1:]
        yield which, np.where(inputs == PAD, newline_id, inputs), targets


def line_sums(scorer: Scorer, lines: list[np.ndarray], start_state: list[np.ndarray], newline_id: int,
              batch: int = LINE_BATCH, progress: Progress = None) -> tuple[float, int]:
    """The line loss of `lines` (id arrays, each ending with the newline id) as (summed NLL, characters scored)."""
    total: Any = 0.0
    count = done = 0
    for which, inputs, targets in line_batches(lines, newline_id, batch):
        nll, _ = scorer.score(inputs, targets, scorer.initial(start_state, len(inputs)))
        total = total + nll
        count += int((targets != PAD).sum())
        done += len(which)
        if progress is not None:
            progress(done / len(lines))
    return float(total), count


def label_line_sums(scorer: Scorer, lines: list[np.ndarray], labels: np.ndarray, start_states: list[np.ndarray],
                    newline_id: int, n_labels: int, batch: int = LINE_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """A labelled list's line loss, label by label: each line from its label's start state
    (start_states: [h] or [h, c], each (labels, layers, H)). Returns (summed NLL, characters) per label."""
    totals, counts = np.zeros(n_labels), np.zeros(n_labels, dtype=np.int64)
    for k in np.unique(labels).tolist():
        rows = np.flatnonzero(labels == k).tolist()
        totals[k], counts[k] = line_sums(scorer, [lines[i] for i in rows], [t[k] for t in start_states], newline_id,
                                         batch)
    return totals, counts


PREFIX_ROWS = 4096  # (line, label) pairs scored together by prefix_nlls: its most rows in one network step
PREFIX_CELLS = 1 << 21  # a run's lines x its longest line at most: its padded characters (16 MB of ids)
# (line, label) pairs from which scoring runs in a worker process a core (where sampling would):
# starting them costs ~20 ms; 2,000 names under the base model's 267 labels are 534,000 pairs.
PARALLEL_PAIRS = 50_000


def line_nlls(scorer: "NumpyScorer", lines: list[np.ndarray], start_state: Optional[list[np.ndarray]],
              newline_id: int) -> np.ndarray:
    """Each line's own NLL (in nats, in the order given), in the layout of line_sums: the
    log-probability `chargen score` reports, and a sample's own when it is drawn at temperature 1."""
    return label_nlls(scorer, lines, [start_state], newline_id)[:, 0]


def mixture_nlls(scorer: "NumpyScorer", lines: list[np.ndarray], starts: list[Optional[list[np.ndarray]]],
                 weights: np.ndarray, newline_id: int, rows: int = PREFIX_ROWS,
                 progress: Progress = None) -> tuple[np.ndarray, np.ndarray]:
    """A labelled model's line NLLs under a mixture of labels (starts: each label's start state;
    weights summing to 1): (-log sum_k w_k p_k(line) per line (n,), -log p_k(line) per line and label (n, P))."""
    per = label_nlls(scorer, lines, starts, newline_id, rows, progress)
    logp = np.log(weights)[None, :] - per
    top = logp.max(axis=1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(logp - top).sum(axis=1))), per


def label_nlls(scorer: "NumpyScorer", lines: list[np.ndarray], starts: list[Optional[list[np.ndarray]]],
               newline_id: int, rows: int = PREFIX_ROWS, progress: Progress = None) -> np.ndarray:
    """-log p_k(line) (n, P) for each line under each start state. The lines are taken in sorted
    order, about `rows` (line, label) pairs at a time (a few lines under 267 labels, or many under
    one), each distinct prefix stepped once (prefix_nlls)."""
    n_labels = len(starts)
    per = np.zeros((len(lines), n_labels))
    order = sorted(range(len(lines)), key=lambda i: lines[i].tolist())  # lines that share prefixes, together
    parts = []  # (the run's lines, its first label, its labels)
    for which in _runs(order, [len(line) for line in lines], max(1, rows // n_labels), PREFIX_CELLS):
        labels = max(1, rows // len(which))
        parts += [(which, k0, min(labels, n_labels - k0)) for k0 in range(0, n_labels, labels)]

    def nlls(part: tuple[list[int], int, int]) -> np.ndarray:
        which, k0, labels = part
        return prefix_nlls(scorer, [lines[i] for i in which], starts[k0 : k0 + labels], newline_id)

    workers = parallel.cores() if len(parts) > 1 and len(lines) * n_labels >= PARALLEL_PAIRS \
        and parallel.forkable(scorer.stepper) and parallel.available() else 1
    done = 0
    for i, value in (parallel.map_forked(nlls, parts, workers) if workers > 1 else enumerate(map(nlls, parts))):
        which, k0, labels = parts[i]
        per[which, k0 : k0 + labels] = value
        done += len(which) * labels
        if progress is not None:
            progress(done / (len(lines) * n_labels))
    return per


def _runs(order: list[int], sizes: list[int], most: int, cells: int) -> list[list[int]]:
    """`order` cut into runs of at most `most` lines, each run's lines x its longest at most `cells`
    (prefix_nlls holds a run's characters as one padded array: a long line among many short ones
    gets a run of its own)."""
    runs: list[list[int]] = []
    run: list[int] = []
    longest = 0
    for i in order:
        if run and (len(run) >= most or (len(run) + 1) * max(longest, sizes[i]) > cells):
            runs.append(run)
            run, longest = [], 0
        run.append(i)
        longest = max(longest, sizes[i])
    return runs + [run] if run else runs


def prefix_nlls(scorer: "NumpyScorer", lines: list[np.ndarray], starts: list[Optional[list[np.ndarray]]],
                newline_id: int) -> np.ndarray:
    """-log p_k(line) (n, P) for each line (an id array ending with the newline id) under each
    start state, the network stepped once for each distinct (start, prefix): a list's lines share
    their first characters (2,000 names hold 6,718 distinct prefixes among their 14,156 characters).

        depth t:   node[k, i]: the row of `state` holding line i's prefix of t characters under start k
                   its logits score line i's character t; its next input is that character
    """
    stepper, n, p = scorer.stepper, len(lines), len(starts)
    sizes = np.array([len(line) for line in lines])  # characters scored: the line's and its newline
    ids = np.full((n, sizes.max()), newline_id, dtype=np.int64)  # (n, W): each line's targets
    ids[np.arange(sizes.max()) < sizes[:, None]] = np.concatenate(lines)
    state = stepper.concat([scorer.initial(start, 1) for start in starts])  # (P rows)
    logits, state = stepper.step(np.full(p, newline_id), state)  # after the "\n" every line starts from
    node = np.repeat(np.arange(p), n)  # (P * n,): the pairs, start-major
    line = np.tile(np.arange(n), p)
    out = np.zeros(p * n)
    for t in range(sizes.max()):
        live = np.flatnonzero(sizes[line] > t)
        out[live] -= log_softmax(logits)[node[live], ids[line[live], t]]
        going = live[sizes[line[live]] > t + 1]  # pairs whose character t is an input (not their newline)
        if not going.size:
            break
        first, inverse = distinct(node[going] * stepper.vocab_size + ids[line[going], t])
        src = going[first]
        logits, state = stepper.step(ids[line[src], t], stepper.select(state, node[src]))
        node[going] = inverse
    return out.reshape(p, n).T


# --- the scorers ------------------------------------------------------------------------------


class NumpyScorer:
    """The numpy twin, stepped a character at a time (no torch needed)."""

    def __init__(self, stepper):
        self.stepper = stepper

    def initial(self, start_state: Optional[list[np.ndarray]], rows: int):
        if start_state is None:
            return self.stepper.init_state(rows)
        return self.stepper.repeat(self.stepper.state_from_arrays(start_state), rows)

    def score(self, inputs: np.ndarray, targets: np.ndarray, state):
        rows, state = self.score_rows(inputs, targets, state)
        return float(rows.sum()), state

    def score_rows(self, inputs: np.ndarray, targets: np.ndarray, state) -> tuple[np.ndarray, Any]:
        """Like score, but the NLL of each row (B,)."""
        rows = np.zeros(len(inputs))
        for t in range(inputs.shape[1]):
            logits, state = self.stepper.step(inputs[:, t], state)
            real = targets[:, t] != PAD
            if real.any():
                logp = log_softmax(logits[real])  # (R, V)
                rows[real] -= np.take_along_axis(logp, targets[real, t][:, None], axis=-1)[:, 0]
        return rows, state


# --- lines, scored one by one (chargen score) --------------------------------------------------


@dataclass
class Score:
    """One line's log-probability under the model, from the start of a line as a sample is drawn
    (temperature 1), the newline that ends it included: what `chargen score` prints."""

    text: str
    logprob: float  # -inf where the line holds a character the model does not know
    chars: int  # characters scored: the line's and its newline
    unknown: tuple[str, ...] = ()  # such characters
    by_label: Optional[dict[str, float]] = None  # a labelled model's, asked for: the logprob under each label
    likeliest: Optional[str] = None  # with by_label: the label likeliest to have made the line (prior: the mix's weights)
    p_likeliest: Optional[float] = None  # its posterior probability

    @property
    def logprob_per_char(self) -> float:
        return self.logprob / self.chars

    def record(self) -> dict:
        """The JSON record of `chargen score --format jsonl` and of the server (an impossible line:
        logprob null, and the characters that make it so)."""
        if self.unknown:
            return {"text": self.text, "logprob": None, "logprob_per_char": None, "chars": self.chars,
                    "unknown": list(self.unknown)}
        out = {"text": self.text, "logprob": round(self.logprob, 4), "logprob_per_char": round(self.logprob_per_char, 4),
               "chars": self.chars}
        if self.by_label is not None:
            out.update(by_label={k: round(v, 4) for k, v in self.by_label.items()}, likeliest=self.likeliest,
                       p_likeliest=round(self.p_likeliest, 4))
        return out


# --- a text, scored ---------------------------------------------------------------------------


@dataclass
class EvalResult:
    loss: float  # nats per character
    chars: int  # characters scored
    skipped: int = 0  # characters dropped as unknown

    @property
    def bpc(self) -> float:
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def to_dict(self) -> dict[str, float]:
        return {"loss": self.loss, "bpc": self.bpc, "perplexity": self.perplexity, "chars": self.chars,
                "skipped": self.skipped}


def evaluate_text(scorer: Scorer, vocab, text: str, *, lines: bool, start_state: list[np.ndarray],
                  seq_len: int, streams: int = EVAL_STREAMS, skip_unknown: bool = False,
                  progress: Progress = None) -> EvalResult:
    """The line loss (lines=True, from `start_state`) or stream loss of `text`, as training reports it."""
    unknown = vocab.count_unknown(text) if skip_unknown else 0
    ids = vocab.encode(text, skip_unknown=skip_unknown).astype(np.int64)
    if len(ids) < 1:
        raise UsageError("the text is too short to evaluate: it holds no known character")
    if lines:
        if "\n" not in vocab:
            raise UsageError("line mode needs a model whose vocabulary holds the newline")
        rows = line_ids(vocab, vocab.decode(ids))
        if not rows:
            raise UsageError("the text holds no non-empty line to evaluate")
        total, count = line_sums(scorer, rows, start_state, vocab.index["\n"], progress=progress)
    else:
        total, count = stream_sums(scorer, ids, seq_len, streams, progress)
        if count == 0:
            raise UsageError("the text is too short to evaluate: it needs at least two characters")
    return EvalResult(loss=total / count, chars=count, skipped=unknown)

