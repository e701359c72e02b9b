"""The row engine: rows of many requests advancing together, one network step for all of them
per character, each row's next character picked under its own request's settings.

`chargen.sampling.drawing` decides which attempts to run and which results to keep; this module
only runs them. A row's result depends on its own request alone (its row of the matrix product,
its counter-based random numbers, its settings), so requests can join between any two steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import numpy as np

from ..config import SampleConfig
from ..tokenizer import Vocab
from .randomness import uniforms

class Stepper(Protocol):
    """What the sampler needs of a network: numpy ids in, numpy logits out, opaque state."""

    vocab_size: int

    def init_state(self, batch_size: int): ...
    def state_from_arrays(self, arrays: list[np.ndarray]): ...
    def select(self, state, rows: np.ndarray): ...
    def repeat(self, state, batch_size: int): ...
    def concat(self, states: list): ...
    def step(self, ids: np.ndarray, state) -> tuple[np.ndarray, object]: ...


# --- one step's distribution ------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def sampling_probs(logits: np.ndarray, temperature: float, top_k: Optional[int], top_p: Optional[float]) -> np.ndarray:
    """(B, V) logits -> (B, V) probabilities after temperature, top-k and top-p (nucleus)."""
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass strictly ahead of each entry
        keep_sorted = before < top_p  # the smallest prefix whose mass reaches top_p (at least one)
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    return p


def draw(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw: row b picks the first id whose cumulative probability exceeds u[b]."""
    cdf = np.cumsum(p, axis=-1)
    ids = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=-1)
    return np.minimum(ids, p.shape[-1] - 1)


@dataclass
class Rows:
    """One prompt's next draws as rows of a batch: attempts `indices`, each its own random stream."""

    prompt_logits: np.ndarray  # (V,) after the prompt
    prompt_state: object  # batch-of-one state after the prompt
    indices: np.ndarray  # (b,) attempt numbers
    key: np.uint64
    cfg: SampleConfig
    newline: int  # the id that ends a sample; -1 for prose
    steps: int  # characters to draw at most
    guide: Optional[Guide] = None
    on_char: Optional[Callable[[str], None]] = None  # streams the characters of a lone row


@dataclass
class Drawn:
    """What rows produced: their texts without the ending newline (None where the guide rejected
    the sample), log-probabilities, characters scored, and the log of the mass the constraints kept."""

    texts: list[Optional[str]]
    logp: np.ndarray
    scored: np.ndarray
    kept: np.ndarray


class RowEngine:
    """Rows of many batches advancing together, one network step for all of them per character.

    `add` queues a batch's rows; each `step` lets the queued rows join, draws one character for
    every row, and returns the batches all of whose rows have ended (at their newline, when their
    guide rejects them, or at their step limit). A row's result depends on its own batch alone: its
    row of the matrix product, random numbers that are a function of (key, index, characters
    drawn), its batch's settings. So batches of other prompts, settings and callers can join
    between any two steps (continuous batching: `chargen serve`) and change nothing.
    """

    _ROW_FIELDS = ("job", "slot", "keys", "indices", "t", "limit", "newline", "dfa", "group", "masking", "guided",
                   "logp", "kept", "rejected")

    def __init__(self, stepper: Stepper, vocab: Vocab):
        self.stepper, self.vocab = stepper, vocab
        self.codepoints = np.array([ord(c) for c in vocab.chars], dtype=np.uint32)
        self.jobs: dict[int, _Job] = {}
        self.groups: dict[tuple, tuple[int, SampleConfig]] = {}  # sampling settings -> (group id, cfg)
        self.pending: list[int] = []  # jobs added since the last step
        self.streaming: list[int] = []  # jobs whose characters are handed out as drawn
        self._ids = 0
        self.rows: dict[str, np.ndarray] = {}  # per active row, each (B,): see _ROW_FIELDS
        self.out = np.zeros((0, 0), dtype=np.uint32)  # (B, W) code points drawn; 0 pads (NUL is never in a vocabulary)
        self.logits: Optional[np.ndarray] = None  # (B, V) for each row's next character
        self.state = None
        self.steps = 0  # network steps taken
        self.row_steps = 0  # rows advanced, summed over steps

    @property
    def size(self) -> int:
        """Rows advancing now or joining at the next step."""
        return (len(self.rows["job"]) if self.rows else 0) + sum(len(self.jobs[j].rows.indices) for j in self.pending)

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    def add(self, rows: Rows) -> int:
        job = self._ids
        self._ids += 1
        self.jobs[job] = _Job(rows)
        self.pending.append(job)
        if rows.on_char is not None:
            self.streaming.append(job)
        return job

    def step(self) -> list[tuple[int, Drawn]]:
        """One character for every row; the batches that finished, with what their rows produced."""
        self._join()
        r, jobs = self.rows, self.jobs
        n = len(r["job"])
        lsm = log_softmax(self.logits)  # (B, V), the model's own distribution
        logits, allowed = self.logits, None
        if r["guided"].any():
            allowed = np.ones(logits.shape, dtype=bool)
            for j in np.unique(r["job"][r["guided"]]).tolist():
                mine = r["job"] == j
                g = jobs[j].rows.guide
                allowed[mine] = g.automaton.allowed(r["dfa"][mine], g.n0 + r["t"][mine])
                r["kept"][mine] += np.log(np.where(allowed[mine], np.exp(lsm[mine]), 0.0).sum(axis=-1))
            if r["masking"].any():  # greedy and --guided rows draw among the allowed characters only
                logits = np.where(~r["masking"][:, None] | allowed, logits, -np.inf)
        ids = self._pick(logits)
        r["logp"] += np.take_along_axis(lsm, ids[:, None], axis=-1)[:, 0]
        ended = ids == r["newline"]
        if allowed is not None:  # exact rows are rejected at the first character that rules them out
            bad = ~allowed[np.arange(n), ids]
            r["rejected"] |= bad
            ended |= bad
            for j in np.unique(r["job"][r["guided"]]).tolist():
                mine = r["job"] == j
                r["dfa"][mine] = jobs[j].rows.guide.automaton.advance(r["dfa"][mine], ids[mine])
        self.out[np.arange(n), r["t"]] = np.where(ended, 0, self.codepoints[ids])
        self._stream(ids, ended)
        r["t"] += 1
        finished = ended | (r["t"] >= r["limit"])
        done = self._finish(np.flatnonzero(finished)) if finished.any() else []
        keep = np.flatnonzero(~finished)
        if keep.size < n:
            self._keep(keep)
            ids = ids[keep]
        if keep.size:
            self.steps += 1
            self.row_steps += keep.size
            self.logits, self.state = self.stepper.step(ids, self.state)
        return done

    def _pick(self, logits: np.ndarray) -> np.ndarray:
        """Each row's next id under its batch's settings; each group of rows with the same settings
        goes through the same code as a lone batch with those settings would."""
        r = self.rows
        if len(self.groups) == 1:
            cfg = next(iter(self.groups.values()))[1]
            return _pick_group(logits, cfg, r["keys"], r["indices"], r["t"])
        ids = np.empty(len(logits), dtype=np.int64)
        for gid, cfg in self.groups.values():
            rows = np.flatnonzero(r["group"] == gid)
            if rows.size:
                ids[rows] = _pick_group(logits[rows], cfg, r["keys"][rows], r["indices"][rows], r["t"][rows])
        return ids

    def _stream(self, ids: np.ndarray, ended: np.ndarray) -> None:
        """Hand each streaming batch's (lone) row its new character."""
        for j in self.streaming:
            at = np.flatnonzero(self.rows["job"] == j)
            if at.size and not ended[at[0]]:
                self.jobs[j].rows.on_char(self.vocab.chars[int(ids[at[0]])])

    def _join(self) -> None:
        """The rows added since the last step join the batch, each starting from its prompt."""
        if not self.pending:
            return
        new = [self.jobs[j] for j in self.pending]
        sizes = [len(job.rows.indices) for job in new]
        for job in new:
            if job.rows.cfg.settings() not in self.groups:
                self.groups[job.rows.cfg.settings()] = (self._ids, job.rows.cfg)  # any id not used before will do
                self._ids += 1
        per_job = {  # one value per joining batch, repeated over its rows
            "job": (self.pending, np.int64),
            "keys": ([job.rows.key for job in new], np.uint64),
            "limit": ([job.rows.steps for job in new], np.int64),
            "newline": ([job.rows.newline for job in new], np.int64),
            "dfa": ([job.rows.guide.start if job.rows.guide else 0 for job in new], np.int64),
            "group": ([self.groups[job.rows.cfg.settings()][0] for job in new], np.int64),
            "masking": ([job.rows.guide is not None and (job.rows.guide.guided or job.rows.cfg.temperature == 0)
                         for job in new], bool),
            "guided": ([job.rows.guide is not None for job in new], bool),
        }
        total = sum(sizes)
        fresh = {name: np.repeat(np.array(values, dtype=dtype), sizes) for name, (values, dtype) in per_job.items()}
        fresh.update(slot=np.concatenate([np.arange(b, dtype=np.int64) for b in sizes]),
                     indices=np.concatenate([job.rows.indices for job in new]).astype(np.int64),
                     t=np.zeros(total, dtype=np.int64), logp=np.zeros(total), kept=np.zeros(total),
                     rejected=np.zeros(total, dtype=bool))
        old = [self.rows] if self.rows and len(self.rows["job"]) else []
        self.rows = {k: np.concatenate([o[k] for o in old] + [fresh[k]]) for k in self._ROW_FIELDS}
        states = [self.stepper.repeat(job.rows.prompt_state, len(job.rows.indices)) for job in new]
        logits = [np.broadcast_to(job.rows.prompt_logits, (len(job.rows.indices), job.rows.prompt_logits.shape[-1]))
                  for job in new]
        if old:
            states.insert(0, self.state)
            logits.insert(0, self.logits)
        self.state = states[0] if len(states) == 1 else self.stepper.concat(states)
        self.logits = np.concatenate(logits)
        width = max([self.out.shape[1]] + [job.rows.steps for job in new])
        out = np.zeros((len(self.rows["job"]), width), dtype=np.uint32)
        out[: len(out) - total, : self.out.shape[1]] = self.out
        self.out = out
        self.pending = []

    def _finish(self, rows: np.ndarray) -> list[tuple[int, Drawn]]:
        """Hand the ended rows' results to their batches; return the batches now complete."""
        r = self.rows
        # A row of code points viewed as a fixed-width numpy string drops its trailing NUL padding.
        texts = np.ascontiguousarray(self.out[rows]).view(f"<U{self.out.shape[1]}").ravel().tolist()
        done = []
        for row, text in zip(rows.tolist(), texts):
            j = int(r["job"][row])
            job = self.jobs[j]
            s = int(r["slot"][row])
            job.drawn.texts[s] = None if r["rejected"][row] else text
            job.drawn.logp[s], job.drawn.scored[s], job.drawn.kept[s] = r["logp"][row], r["t"][row], r["kept"][row]
            job.remaining -= 1
            if job.remaining == 0:
                done.append((j, job.drawn))
                del self.jobs[j]
                if job.rows.on_char is not None:
                    self.streaming.remove(j)
        return done

    def _keep(self, keep: np.ndarray) -> None:
        """Drop the ended rows (and the settings no row uses any more)."""
        self.rows = {k: v[keep] for k, v in self.rows.items()}
        self.out = self.out[keep] if keep.size else np.zeros((0, 0), dtype=np.uint32)
        self.logits = self.logits[keep]
        self.state = self.stepper.select(self.state, keep) if keep.size else None
        present = set(np.unique(self.rows["group"]).tolist())
        self.groups = {k: v for k, v in self.groups.items() if v[0] in present}


class _Job:
    """One batch of rows in a RowEngine, and what its rows produced so far."""

    def __init__(self, rows: Rows):
        b = len(rows.indices)
        self.rows = rows
        self.remaining = b
        self.drawn = Drawn([None] * b, np.zeros(b), np.zeros(b, dtype=np.int64), np.zeros(b))


def run_rows(stepper: Stepper, vocab: Vocab, batches: list[Rows]) -> list[Drawn]:
    """Advance the rows of all `batches` together until each has ended (a RowEngine run dry)."""
    engine = RowEngine(stepper, vocab)
    jobs = [engine.add(b) for b in batches]
    done: dict[int, Drawn] = {}
    while engine.busy:
        done.update(engine.step())
    return [done[j] for j in jobs]


def _pick_group(logits: np.ndarray, cfg: SampleConfig, keys: np.ndarray, indices: np.ndarray,
                t: np.ndarray) -> np.ndarray:
    """Next ids of rows sharing settings: argmax at temperature 0, else a draw with their random numbers."""
    if cfg.temperature == 0:
        return logits.argmax(axis=-1)
    p = sampling_probs(logits, cfg.temperature, cfg.top_k, cfg.top_p)
    return draw(p, uniforms(keys, indices, t))
