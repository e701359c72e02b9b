"""Drawing samples: run the prompt through the network once, then one character at a time,
carrying the recurrent state; many samples advance together as one batch.

Randomness is counter-based: the uniform number that picks character t of sample i is a hash of
(seed, i, t). So the same seed gives the same samples whatever the batch size, whichever backend
(numpy or torch) computed the probabilities, and however many earlier draws were rejected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Protocol

import numpy as np

from .config import SampleConfig
from .errors import SamplingError, UsageError, VocabularyError
from .tokenizer import Vocab

MAX_BATCH = 1024  # rows advanced together; bounds memory (state is MAX_BATCH x hidden per layer)


class Stepper(Protocol):
    """What the sampler needs of a network: numpy ids in, numpy logits out, opaque state."""

    vocab_size: int

    def init_state(self, batch_size: int): ...
    def state_from_arrays(self, arrays: list[np.ndarray]): ...
    def select(self, state, rows: np.ndarray): ...
    def repeat(self, state, batch_size: int): ...
    def concat(self, states: list): ...
    def step(self, ids: np.ndarray, state) -> tuple[np.ndarray, object]: ...


class TorchStepper:
    """Adapter that lets the sampler drive a torch CharRNN (on any device)."""

    def __init__(self, model, device=None):
        import torch

        self.torch = torch
        self.model = model.eval()
        self.device = device or next(model.parameters()).device
        self.vocab_size = model.config.vocab_size

    def init_state(self, batch_size: int):
        return self.model.init_state(batch_size, self.device)

    def state_from_arrays(self, arrays: list[np.ndarray]):
        from .model import state_from_tensors

        return state_from_tensors([self.torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[:, None]
                                   .to(self.device) for a in arrays])  # each (layers, 1, hidden)

    def select(self, state, rows: np.ndarray):
        idx = self.torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.device)
        if isinstance(state, tuple):
            return tuple(s.index_select(1, idx) for s in state)
        return state.index_select(1, idx)

    def repeat(self, state, batch_size: int):
        if isinstance(state, tuple):
            return tuple(s.repeat(1, batch_size, 1) for s in state)
        return state.repeat(1, batch_size, 1)

    def concat(self, states: list):
        if isinstance(states[0], tuple):
            return tuple(self.torch.cat(parts, dim=1) for parts in zip(*states))
        return self.torch.cat(states, dim=1)

    def step(self, ids: np.ndarray, state):
        with self.torch.no_grad():
            x = self.torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device)[:, None]  # (B, 1)
            logits, state = self.model(x, state)
        return logits[:, 0].float().cpu().numpy(), state


# --- counter-based random numbers -------------------------------------------------------------

_MASK, _M1_INT, _M2_INT, _GOLD_INT = (1 << 64) - 1, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15
_M1, _M2, _GOLD = np.uint64(_M1_INT), np.uint64(_M2_INT), np.uint64(_GOLD_INT)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a good 64-bit hash, vectorised."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _mix_int(z: int) -> int:
    """_mix on one Python int, modulo 2**64 as uint64 arithmetic is (tested equal): a key is
    derived per request, where numpy's per-call cost would dominate."""
    z = ((z ^ (z >> 30)) * _M1_INT) & _MASK
    z = ((z ^ (z >> 27)) * _M2_INT) & _MASK
    return z ^ (z >> 31)


def derive_key(seed: int, *stream: int) -> np.uint64:
    z = _mix_int(seed & _MASK)
    for s in stream:
        z = _mix_int(z ^ _mix_int(((s & _MASK) + _GOLD_INT) & _MASK))
    return np.uint64(z)


def uniforms(key: np.uint64 | np.ndarray, sample_idx: np.ndarray, t: int | np.ndarray) -> np.ndarray:
    """One U[0, 1) per sample for its character t, a pure function of (key, sample index, t);
    key and t may be one for all or one per sample."""
    with np.errstate(over="ignore"):
        z = _mix(sample_idx.astype(np.uint64) * _GOLD + np.asarray(t).astype(np.uint64) + key)
        z = _mix(z ^ key)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def random_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 1


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


# --- samples ----------------------------------------------------------------------------------


@dataclass
class Sample:
    text: str  # prompt + generated text (without the newline that ended a line)
    prompt: str
    logprob: float  # log-probability under the model (temperature 1) of every generated char,
    n_chars: int  # including the newline that ended a line; n_chars counts them
    kept: float = 0.0  # constrained samples: log of the model's mass the constraints allowed, summed over steps

    @property
    def logprob_per_char(self) -> float:
        return self.logprob / self.n_chars if self.n_chars else 0.0

    @property
    def logprob_guided(self) -> float:
        """Log-probability under the model renormalised at each step over what the constraints allow."""
        return self.logprob - self.kept

    def record(self, constrained: bool = False) -> dict:
        """The JSON record of `chargen sample --format jsonl` and of `chargen serve`; drawn under
        constraints, also the mass they kept and the log-probability under --guided."""
        out = {"text": self.text, "prompt": self.prompt, "logprob": round(self.logprob, 4),
               "logprob_per_char": round(self.logprob_per_char, 4), "chars": self.n_chars}
        if constrained:
            out.update(kept=round(self.kept, 4), logprob_guided=round(self.logprob_guided, 4))
        return out


@dataclass
class SampleStats:
    """What drawing cost: filled in as samples are drawn (draws = samples tried, accepted = kept)."""

    draws: int = 0
    accepted: int = 0
    rejected_by_constraints: int = 0

    @property
    def satisfied(self) -> int:
        return self.draws - self.rejected_by_constraints

    @property
    def satisfied_share(self) -> float:
        """Share of draws that met the constraints: under exact sampling, an estimate of the
        probability the model (at these settings) gives to the constraints."""
        return self.satisfied / self.draws if self.draws else 1.0


@dataclass
class Guide:
    """Constraints for one prompt: the automaton, its state after the prompt, and how to use it.

    exact (guided=False): draw from the model's distribution and reject a sample at the first
    character from which the constraints can no longer be met; accepted samples then follow the
    model's distribution conditioned on the constraints. guided: draw only among the allowed
    characters, renormalised; no draw is wasted, but the distribution is not the conditional one.
    """

    automaton: "Automaton"  # noqa: F821
    start: int
    n0: int  # characters of the prompt
    guided: bool = False

    @property
    def steps(self) -> int:
        return self.automaton.max_len - self.n0 + 1  # the last step can only be the newline


def initial_state(stepper: Stepper, start_state: Optional[list[np.ndarray]]):
    """A batch-of-one state: the model's typical end-of-line state if the checkpoint has one."""
    return stepper.init_state(1) if start_state is None else stepper.state_from_arrays(start_state)


def check_prompt(vocab: Vocab, prompt: str, lines: bool) -> None:
    bad = vocab.unknown_chars(prompt)
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise VocabularyError(f"the prompt holds {shown}, not in the model's vocabulary")
    if lines and "\n" in prompt:
        raise UsageError("a prompt in line mode cannot hold a newline")


def prime(stepper: Stepper, vocab: Vocab, prompt: str, lines: bool, start_state: Optional[list[np.ndarray]] = None):
    """Run "\\n" (start of a line) and the prompt through the network once: (logits (V,), state)."""
    check_prompt(vocab, prompt, lines)
    start = "\n" if "\n" in vocab else (" " if " " in vocab else vocab.chars[0])
    ids = vocab.encode(start + prompt).astype(np.int64)
    state = initial_state(stepper, start_state)
    logits = None
    for i in ids:  # the prefix runs once, then its state is shared by every sample
        logits, state = stepper.step(np.array([i]), state)
    return logits[0], state


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
            if _settings(job.rows.cfg) not in self.groups:
                self.groups[_settings(job.rows.cfg)] = (self._ids, job.rows.cfg)  # any id not used before will do
                self._ids += 1
        per_job = {  # one value per joining batch, repeated over its rows
            "job": (self.pending, np.int64),
            "keys": ([job.rows.key for job in new], np.uint64),
            "limit": ([job.rows.steps for job in new], np.int64),
            "newline": ([job.rows.newline for job in new], np.int64),
            "dfa": ([job.rows.guide.start if job.rows.guide else 0 for job in new], np.int64),
            "group": ([self.groups[_settings(job.rows.cfg)][0] for job in new], np.int64),
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


def _settings(cfg: SampleConfig) -> tuple:
    """What decides how a row's next character is picked from its logits."""
    return cfg.temperature, cfg.top_k, cfg.top_p


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


class Drawing:
    """The draws that make one prompt's `cfg.num` samples: which attempts to run next
    (`next_rows`) and which of their results to keep (`take`).

    Line mode redraws empty samples, repeats (`unique`), training lines (`novel`), lines in
    `exclude` and, under an exact `automaton`, samples that break the constraints; a bounded
    number of draws per wanted sample guards against a model that cannot produce enough.
    `primed` is what `prime` gives for this prompt, if the caller keeps it. Attempt i always
    uses random stream i and results are kept in attempt order, so what is kept
    does not depend on how many attempts run at once, nor on what they run beside.
    """

    def __init__(self, stepper: Stepper, vocab: Vocab, prompt: str, cfg: SampleConfig, *, lines: bool,
                 key: np.uint64, seen: Optional[set[str]] = None, training_lines: Optional[set[str]] = None,
                 exclude: Optional[set[str]] = None, on_char: Optional[Callable[[str], None]] = None,
                 start_state: Optional[list[np.ndarray]] = None,
                 automaton: Optional["Automaton"] = None,  # noqa: F821
                 stats: Optional[SampleStats] = None, primed: Optional[tuple[np.ndarray, object]] = None):
        self.guide = guide_for(automaton, vocab, prompt, cfg, lines)
        self.prompt_logits, self.prompt_state = primed or prime(stepper, vocab, prompt, lines, start_state)
        self.prompt, self.cfg, self.lines, self.key = prompt, cfg, lines, key
        self.newline = vocab.index.get("\n", -1) if lines else -1
        self.steps = self.guide.steps if self.guide is not None else cfg.max_length(lines)
        self.seen = seen if seen is not None else set()
        self.training_lines = training_lines if cfg.novel else None
        self.exclude, self.on_char = exclude, on_char
        self.stats = stats if stats is not None else SampleStats()
        self.rejecting = self.guide is not None and not self.guide.guided and cfg.temperature > 0
        self.budget = cfg.num * (CONSTRAINED_TRIES if self.rejecting else cfg.max_tries) + 100
        self.produced, self.attempt = 0, 0

    @property
    def done(self) -> bool:
        return self.produced >= self.cfg.num

    def next_rows(self, limit: int = MAX_BATCH) -> Rows:
        """The next attempts to run, at most `limit` of them; a SamplingError once the budget is spent."""
        cfg = self.cfg
        if self.attempt >= self.budget:
            raise SamplingError(_shortfall(cfg, self.produced, self.attempt, self.rejecting))
        need = cfg.num - self.produced
        # Redraws are likely with --unique/--novel/--exclude and constraints: overdraw by the
        # rate seen so far, so one batch usually suffices (extra draws are wasted work only).
        if cfg.unique or cfg.novel or self.exclude or self.rejecting:
            rate = self.produced / self.attempt if self.attempt else (0.5 if self.rejecting else 0.8)
            want = int(need / max(rate, 0.02) * 1.1) + 8
        else:
            want = need
        b = max(1, min(want, limit, self.budget - self.attempt))
        stream = self.on_char if (b == 1 and cfg.num == 1 and not self.lines) else None
        return Rows(self.prompt_logits, self.prompt_state, np.arange(self.attempt, self.attempt + b, dtype=np.int64),
                    self.key, cfg, self.newline, self.steps, self.guide, stream)

    def take(self, drawn: Drawn) -> list[Sample]:
        """Keep what the rows of the last `next_rows` produced, in attempt order, up to cfg.num."""
        cfg, stats, kept = self.cfg, self.stats, []
        for generated, logprob, n_scored, k in zip(drawn.texts, drawn.logp.tolist(), drawn.scored.tolist(),
                                                   drawn.kept.tolist()):
            if self.produced >= cfg.num:
                break
            self.attempt += 1
            stats.draws += 1
            if generated is None:
                stats.rejected_by_constraints += 1
                continue
            text = self.prompt + generated
            if self.lines and not text:
                continue
            if cfg.unique and text in self.seen:
                continue
            if (self.training_lines is not None and text in self.training_lines) or \
                    (self.exclude and text in self.exclude):
                continue
            if cfg.unique:
                self.seen.add(text)
            self.produced += 1
            stats.accepted += 1
            kept.append(Sample(text=text, prompt=self.prompt, logprob=logprob, n_chars=n_scored, kept=k))
        return kept


def run(stepper: Stepper, vocab: Vocab, drawings: Iterable[Drawing], batch_size: int = MAX_BATCH) -> Iterator[Sample]:
    """The samples of each drawing in turn, its attempts run `batch_size` at a time."""
    for drawing in drawings:
        while not drawing.done:
            yield from drawing.take(run_rows(stepper, vocab, [drawing.next_rows(batch_size)])[0])


def generate(
    stepper: Stepper,
    vocab: Vocab,
    prompt: str,
    cfg: SampleConfig,
    *,
    lines: bool,
    key: np.uint64,
    batch_size: int = MAX_BATCH,
    **options,
) -> Iterator[Sample]:
    """Yield cfg.num samples for one prompt, in order (cfg is validated by the caller); `options`
    are Drawing's (seen, training_lines, exclude, on_char, start_state, automaton, stats).
    `on_char` streams the characters of a lone prose sample as drawn."""
    yield from run(stepper, vocab, [Drawing(stepper, vocab, prompt, cfg, lines=lines, key=key, **options)], batch_size)


CONSTRAINED_TRIES = 2000  # draws per wanted sample under exact constraints: down to ~0.05% acceptance


def guide_for(automaton, vocab: Vocab, prompt: str, cfg: SampleConfig, lines: bool) -> Optional[Guide]:
    """The constraints for this prompt, with the length cap the sample options set; checked up front."""
    if automaton is None:
        return None
    if not lines:
        raise UsageError("constraints apply to line samples; this is prose (pass --lines to sample lines)")
    bounded = automaton.bounded(len(prompt) + cfg.max_length(lines))
    start = bounded.start(prompt, vocab)
    if cfg.unique:
        possible = bounded.count(start, len(prompt))
        if possible < cfg.num:
            raise UsageError(f"only {int(possible):,} distinct samples satisfy the constraints, fewer than the "
                             f"{cfg.num:,} asked for with --unique; ask for fewer (--top {int(possible)} lists them all)")
    return Guide(bounded, start, len(prompt), guided=cfg.guided)


def _shortfall(cfg: SampleConfig, produced: int, attempt: int, rejecting: bool) -> str:
    why = [name for name, on in (("unique", cfg.unique), ("novel", cfg.novel)) if on]
    what = " and ".join(why) + " " if why else ("" if rejecting else "non-empty ")
    advice = "loosen the constraints, raise --temperature, or pass --guided" if rejecting else \
        "ask for fewer, raise --temperature, or drop --unique/--novel/--exclude"
    return f"the model produced only {produced} of {cfg.num} {what}samples in {attempt:,} draws; {advice}"
