"""The row engine: rows of many requests advancing together, one network step for all of them
per character, each row's next character picked under its own request's settings.

`chargen.sampling.drawing` decides which attempts to run and which results to keep; this module
only runs them. A row's result depends on its own request alone (its row of the matrix product,
its counter-based random numbers, its settings), so requests can join between any two steps.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Optional, Protocol

import numpy as np

from ..config import SampleConfig
from ..tokenizer import Vocab
from .constraints import Guide
from .prefixes import PREFIX_DEPTH, PREFIX_MEMORY, PrefixCache, distinct
from .randomness import uniforms

OUT_WIDTH = 16  # characters a row's drawn text holds at first (it doubles as rows draw on: names are short)


class Stepper(Protocol):
    """What the sampler needs of a network: numpy ids in, numpy logits out, opaque state."""

    vocab_size: int

    def init_state(self, batch_size: int): ...
    def state_from_arrays(self, arrays: list[np.ndarray]): ...
    def select(self, state, rows: np.ndarray): ...
    def repeat(self, state, batch_size: int): ...
    def concat(self, states: list): ...
    def to_rows(self, state) -> np.ndarray: ...  # (B, S) float32: a store of states (chargen.sampling.tree)
    def from_rows(self, rows: np.ndarray): ...
    def step(self, ids: np.ndarray, state) -> tuple[np.ndarray, object]: ...
    def head(self, state) -> np.ndarray: ...  # (B, V): the logits step returned with this state


# --- one step's distribution ------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def log_normalizer(logits: np.ndarray) -> np.ndarray:
    """(B, V) logits -> (B,) log of the softmax's denominator, in float32 (a row's log-probability
    of id v is logits[v] minus it): the engine needs it for the drawn ids only."""
    m = logits.max(axis=-1, keepdims=True)
    e = np.exp(logits - m)
    return (m[:, 0] + np.log(e.sum(axis=-1))).astype(np.float64)


def sampling_probs(logits: np.ndarray, temperature: float, top_k: Optional[int], top_p: Optional[float]) -> np.ndarray:
    """(B, V) logits -> (B, V) probabilities after temperature, top-k and top-p (nucleus)."""
    z = logits.astype(np.float64)
    with np.errstate(over="ignore"):  # (the max first: at a temperature of 5e-324 the logits' quotients
        z = (z - z.max(axis=-1, keepdims=True)) / temperature  # overflowed, and inf - inf drew nothing; now -inf)
    if top_k is not None and top_k < z.shape[-1]:  # (the max, 0, is among the k kept: z's max stays 0)
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
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


def texts_of(codes: np.ndarray) -> list[str]:
    """(B, W) uint32 code points, 0-padded at the end (NUL is never in a vocabulary) -> B strings:
    a row viewed as a fixed-width numpy string drops its trailing NULs."""
    return np.ascontiguousarray(codes).view(f"<U{codes.shape[1]}").ravel().tolist()


def inverse_cdf(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw: row b picks the first id whose cumulative probability exceeds u[b]."""
    return pick_from_cdf(np.cumsum(p, axis=-1), u)


def pick_from_cdf(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """inverse_cdf, given the rows' cumulative probabilities."""
    ids = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=-1)
    return np.minimum(ids, cdf.shape[-1] - 1)


@dataclass
class Attempts:
    """One prompt's next attempts, to run as rows of the engine: attempt `indices`, each its own
    random stream; a job, to the engine. A blend of labels primes the prompt once per label: then
    `starts` says which of those each attempt starts from."""

    prompt_logits: np.ndarray  # (V,) after the prompt; (P, V) with `starts`
    prompt_state: object  # batch-of-one state after the prompt; P rows with `starts`
    indices: np.ndarray  # (b,) attempt numbers
    key: np.uint64
    cfg: SampleConfig
    newline: int  # the id that ends a sample; -1 for prose
    steps: int  # characters to draw at most
    guide: Optional[Guide] = None
    on_char: Optional[Callable[[str], None]] = None  # streams the characters of a lone row
    starts: Optional[np.ndarray] = None  # (b,): the primed row each attempt starts from

    def primed_rows(self) -> np.ndarray:
        """Which of the prompt's primed rows each attempt starts from: (b,)."""
        return self.starts if self.starts is not None else np.zeros(len(self.indices), dtype=np.int64)

    def __reduce__(self):
        """As a worker process gets it (chargen.sampling.parallel): a server's step sends a few jobs
        of a few attempts each, whose numpy key and index array cost more to pickle than Python's
        ints (a step's message of 4 jobs: 39 -> 22 µs, and 25 -> 16 to load)."""
        indices = self.indices.tolist() if len(self.indices) <= FEW else self.indices
        return _attempts, (self.prompt_logits, self.prompt_state, indices, int(self.key), self.cfg, self.newline,
                           self.steps, self.guide, self.on_char, self.starts)


@dataclass
class Results:
    """What a job's attempts produced, in attempt order: their texts without the ending newline
    (None where the guide rejected the sample), log-probabilities, characters scored, and the log
    of the mass the constraints kept."""

    texts: list[Optional[str]]
    logp: np.ndarray
    scored: np.ndarray
    kept: np.ndarray

    @classmethod
    def empty(cls, n: int) -> "Results":
        return cls([None] * n, np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n))

    def __reduce__(self):
        """As a worker process sends it back: a few attempts' values as Python lists (a server's step
        ends jobs of a few rows each; 4 of them pickle in 7 µs so, 35 as numpy arrays)."""
        if len(self.texts) > FEW:
            return Results, (self.texts, self.logp, self.scored, self.kept)
        return _results, (self.texts, self.logp.tolist(), self.scored.tolist(), self.kept.tolist())


FEW = 64  # attempts a job holds at most to travel between processes as Python lists, not numpy arrays


def _attempts(prompt_logits, prompt_state, indices, key, *rest) -> Attempts:
    return Attempts(prompt_logits, prompt_state, np.asarray(indices, dtype=np.int64), np.uint64(key), *rest)


def _results(texts, logp, scored, kept) -> Results:
    return Results(texts, np.array(logp, dtype=np.float64), np.array(scored, dtype=np.int64),
                   np.array(kept, dtype=np.float64))


def _column(dtype: type) -> Any:
    return field(metadata={"dtype": dtype})


@dataclass
class Rows:
    """The engine's active rows: one entry per row in every column, each (B,)."""

    job: np.ndarray = _column(np.int64)  # the job (Attempts) the row runs
    slot: np.ndarray = _column(np.int64)  # its place among the job's attempts
    key: np.ndarray = _column(np.uint64)  # the job's random key
    index: np.ndarray = _column(np.int64)  # the attempt number: its random stream
    t: np.ndarray = _column(np.int64)  # characters drawn so far
    limit: np.ndarray = _column(np.int64)  # characters it may draw
    newline: np.ndarray = _column(np.int64)  # the id that ends it (-1: none)
    dfa: np.ndarray = _column(np.int64)  # its constraints automaton's state
    group: np.ndarray = _column(np.int64)  # its settings group (SampleConfig.settings)
    masking: np.ndarray = _column(bool)  # draws only among allowed characters (guided, or greedy under constraints)
    guided: np.ndarray = _column(bool)  # has constraints
    logp: np.ndarray = _column(np.float64)  # log-probability of what it drew
    kept: np.ndarray = _column(np.float64)  # log of the mass its constraints allowed
    rejected: np.ndarray = _column(bool)  # its constraints ruled it out
    node: np.ndarray = _column(np.int64)  # its prefix's node in the engine's PrefixCache (cap and up: a node of its own)

    COLUMNS: ClassVar[tuple[str, ...]]  # the names above (set below: once, not per step)

    @classmethod
    def empty(cls) -> "Rows":
        return cls(**{f.name: np.zeros(0, dtype=f.metadata["dtype"]) for f in fields(cls)})

    @classmethod
    def concat(cls, parts: list["Rows"]) -> "Rows":
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in cls.COLUMNS})

    def take(self, rows: np.ndarray) -> "Rows":
        return Rows(**{name: getattr(self, name)[rows] for name in self.COLUMNS})

    def __len__(self) -> int:
        return len(self.job)


Rows.COLUMNS = tuple(f.name for f in fields(Rows))


class RowEngine:
    """The rows of many jobs advancing together, one network step for all of them per character.

    `add` queues a job (Attempts); each `step` lets the queued jobs' rows join, draws one character
    for every row, and returns the jobs all of whose rows have ended (at their newline, when their
    guide rejects them, or at their step limit) with their Results. A row's result depends on its
    own job alone: its row of the matrix product, random numbers that are a function of (key,
    attempt, characters drawn), its job's settings. So jobs of other prompts, settings and callers
    can join between any two steps (continuous batching: `chargen serve`) and change nothing.
    The network steps only the prefixes not drawn before (chargen.sampling.prefixes): rows that
    reach a prefix another row reached take its logits and state.
    """

    waited = 0.0  # seconds its steps waited (chargen.sampling.parallel.ProcessEngine's face): none, it computes

    def __init__(self, stepper: Stepper, vocab: Vocab, prefix_memory: int = PREFIX_MEMORY):
        self.stepper, self.vocab, self.prefix_memory = stepper, vocab, prefix_memory
        self.codepoints = np.array([ord(c) for c in vocab.chars], dtype=np.uint32)
        self.jobs: dict[int, _Job] = {}
        self.groups: dict[tuple, tuple[int, SampleConfig]] = {}  # sampling settings -> (group id, cfg)
        self.pending: list[int] = []  # jobs added since the last step
        self.streaming: list[int] = []  # jobs whose characters are handed out as drawn
        self._job_ids = itertools.count()
        self._group_ids = itertools.count()
        self.rows = Rows.empty()
        self.out = np.zeros((0, OUT_WIDTH), dtype=np.uint32)  # (B, W) code points drawn; 0 pads (NUL is never in a vocabulary)
        self.reach = 0  # the most characters a row has drawn (`out` doubles its columns to hold them, halves them after)
        self.cache: Optional[PrefixCache] = None  # each row's logits and state, at its node; made with the first rows
        self.logits: Optional[np.ndarray] = None  # (B, V): this step's rows' logits for their next character
        self.steps = 0  # network steps taken
        self.row_steps = 0  # rows advanced, summed over steps
        self.computed = 0  # rows the network stepped (the others' prefixes were in the cache)

    @property
    def size(self) -> int:
        """Rows advancing now or joining at the next step."""
        return len(self.rows) + sum(len(self.jobs[j].attempts.indices) for j in self.pending)

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    def add(self, attempts: Attempts) -> int:
        job = next(self._job_ids)
        self.jobs[job] = _Job(attempts)
        self.pending.append(job)
        if attempts.on_char is not None:
            self.streaming.append(job)
        return job

    def wake(self) -> None:
        """Nothing to wake: its caller steps it (a ProcessEngine's step waits on its workers)."""

    def close(self) -> None:
        """Nothing to stop (a ProcessEngine stops its worker processes)."""

    def cancel(self, job: int) -> None:
        """Drop a job and its rows (its caller needs no more of its results)."""
        if job in self.pending:
            self.pending.remove(job)
        elif job in self.jobs:
            self._keep(np.flatnonzero(self.rows.job != job))
        if job in self.streaming:
            self.streaming.remove(job)
        self.jobs.pop(job, None)

    def step(self) -> list[tuple[int, Results]]:
        """One character for every row; the jobs that finished, with what their rows produced."""
        self._join()
        r = self.rows
        n = len(r)
        plain = self._plain_settings()
        allowed = None
        if plain is not None:  # each node's draw computed once (the same numbers as below)
            lse, cdf = self._node_draws(plain)
            ids = pick_from_cdf(cdf, uniforms(r.key, r.index, r.t))
            r.logp += self.cache.logit_of(r.node, ids) - lse
        else:
            self.logits = self.cache.logits_of(r.node)  # (B, V) for each row's next character
            lse = log_normalizer(self.logits)  # (B,): log p(v) = logit(v) - lse, the model's own distribution
            logits = self.logits
            if r.guided.any():
                allowed = self._allowed(lse)
                if r.masking.any():  # greedy and --guided rows draw among the allowed characters only
                    logits = np.where(~r.masking[:, None] | allowed, logits, -np.inf)
            ids = self._pick(logits)
            r.logp += np.take_along_axis(self.logits, ids[:, None], axis=-1)[:, 0] - lse
        ended = ids == r.newline
        if allowed is not None:  # exact rows are rejected at the first character that rules them out
            bad = ~allowed[np.arange(n), ids]
            r.rejected |= bad
            ended |= bad
            self._advance_guides(ids)
        if self.reach >= self.out.shape[1]:  # a row draws past the columns kept: twice as many
            self.out = np.concatenate([self.out, np.zeros_like(self.out)], axis=1)
        self.out[np.arange(n), r.t] = np.where(ended, 0, self.codepoints[ids])
        self.reach += 1
        self._stream(ids, ended)
        r.t += 1
        finished = ended | (r.t >= r.limit)
        done = self._finish(np.flatnonzero(finished)) if finished.any() else []
        keep = np.flatnonzero(~finished)
        if keep.size < n:
            self._keep(keep)
            ids = ids[keep]
        if keep.size:
            self.steps += 1
            self.row_steps += keep.size
            self._advance(ids)
        return done

    def _advance(self, ids: np.ndarray) -> None:
        """Each row's node after its new character `ids`: the cache's where its new prefix is
        there, else a new one from one network step for each distinct new prefix (rows on their
        own nodes, and rows past PREFIX_DEPTH characters, are each their own)."""
        r, cache = self.rows, self.cache
        if (r.node >= cache.cap).all():  # every row on a node of its own (a long sample): nothing to look up
            logits, state = self.stepper.step(ids, cache.own_native_of(r.node))
            self.computed += len(ids)
            r.node = cache.keep_own(logits, state)
            return
        nodes = cache.find(r.node, ids)
        miss = np.flatnonzero(nodes < 0)
        parent = np.where(r.t[miss] <= PREFIX_DEPTH, r.node[miss], cache.cap)  # cache.cap and up: not kept
        keys = np.where(parent < cache.cap, parent * len(self.codepoints) + ids[miss], miss - len(ids))
        first, inverse = distinct(keys)  # (the rows' own: negative keys, each its own)
        src = miss[first]
        logits, states = self._step(ids[src], r.node[src])
        nodes[miss] = cache.advance(parent[first], ids[src], logits, states)[inverse]
        r.node = nodes

    def _step(self, ids: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One network step from `nodes` with characters `ids`: logits (k, V) and states (k, S)."""
        cache = self.cache
        if not len(ids):
            return np.zeros((0, cache.vocab_size), np.float32), np.zeros((0, cache.state_size), np.float32)
        logits, state = self.stepper.step(ids, self.stepper.from_rows(cache.states_of(nodes)))
        self.computed += len(ids)
        return logits, self.stepper.to_rows(state)

    def _guided_jobs(self) -> list[tuple[int, np.ndarray, Guide]]:
        """(job, its rows as a mask, its guide) for each job with constraints."""
        r = self.rows
        return [(j, r.job == j, self.jobs[j].attempts.guide) for j in sorted(set(r.job[r.guided].tolist()))]

    def _allowed(self, lse: np.ndarray) -> np.ndarray:
        """(B, V): which characters each row's constraints allow next (all, for rows without); the
        mass they allow is added to the rows' `kept`."""
        r = self.rows
        allowed = np.ones(self.logits.shape, dtype=bool)
        for _, mine, guide in self._guided_jobs():
            allowed[mine] = guide.automaton.allowed(r.dfa[mine], guide.n0 + r.t[mine])
            lsm = self.logits[mine].astype(np.float64) - lse[mine, None]
            r.kept[mine] += np.log(np.where(allowed[mine], np.exp(lsm), 0.0).sum(axis=-1))
        return allowed

    def _advance_guides(self, ids: np.ndarray) -> None:
        for _, mine, guide in self._guided_jobs():
            self.rows.dfa[mine] = guide.automaton.advance(self.rows.dfa[mine], ids[mine])

    def _plain_settings(self) -> Optional[SampleConfig]:
        """The one setting every row draws under, when it is a plain random draw (no constraints,
        temperature above 0): then the draw's work is a function of the node alone."""
        if len(self.groups) != 1 or self.rows.guided.any():
            return None
        cfg = next(iter(self.groups.values()))[1]
        return cfg if cfg.temperature > 0 else None

    def _node_draws(self, cfg: SampleConfig) -> tuple[np.ndarray, np.ndarray]:
        """Each row's log-normaliser (B,) and cumulative probabilities (B, V) under `cfg`, what
        log_normalizer and _pick_group compute from its logits: kept with the cache's nodes and
        computed once for each (again when the settings change)."""
        r, cache = self.rows, self.cache
        key = cfg.settings()
        if cache.draw_key != key:
            cache.draw_key = key
            cache.drawn[:] = False
        kept = r.node < cache.cap
        todo = np.flatnonzero(~kept)  # rows on nodes of their own: computed here
        new = r.node[kept][~cache.drawn[r.node[kept]]]
        if new.size:  # the kept nodes not computed yet, once each
            new = new[distinct(new)[0]]
            cache.lse[new], cache.cdf[new] = _draw(cache.logits[new], cfg)
            cache.drawn[new] = True
        lse = np.empty(len(r))
        cdf = np.empty((len(r), cache.vocab_size))
        at = np.flatnonzero(kept)
        lse[at], cdf[at] = cache.lse[r.node[at]], cache.cdf[r.node[at]]
        if todo.size:
            lse[todo], cdf[todo] = _draw(cache.logits_of(r.node[todo]), cfg)
        return lse, cdf

    def _pick(self, logits: np.ndarray) -> np.ndarray:
        """Each row's next id under its job's settings; each group of rows with the same settings
        goes through the same code as a lone job with those settings would."""
        r = self.rows
        if len(self.groups) == 1:
            cfg = next(iter(self.groups.values()))[1]
            return _pick_group(logits, cfg, r.key, r.index, r.t)
        ids = np.empty(len(logits), dtype=np.int64)
        for gid, cfg in self.groups.values():
            mine = np.flatnonzero(r.group == gid)
            if mine.size:
                ids[mine] = _pick_group(logits[mine], cfg, r.key[mine], r.index[mine], r.t[mine])
        return ids

    def _stream(self, ids: np.ndarray, ended: np.ndarray) -> None:
        """Hand each streaming job's (lone) row its new character."""
        for j in self.streaming:
            at = np.flatnonzero(self.rows.job == j)
            if at.size and not ended[at[0]]:
                self.jobs[j].attempts.on_char(self.vocab.chars[int(ids[at[0]])])

    def _join(self) -> None:
        """The jobs added since the last step join: their rows, each starting from its prompt."""
        if not self.pending:
            return
        new = [self.jobs[j].attempts for j in self.pending]
        groups = []
        for a in new:
            settings = a.cfg.settings()
            if settings not in self.groups:
                self.groups[settings] = (next(self._group_ids), a.cfg)
            groups.append(self.groups[settings][0])
        rows = self._new_rows(self.pending, new, groups)
        rows.node = self._start_nodes(new)
        self.rows = Rows.concat([self.rows, rows])
        self.out = np.concatenate([self.out, np.zeros((len(rows), self.out.shape[1]), dtype=np.uint32)])
        self.pending = []

    def _start_nodes(self, new: list[Attempts]) -> np.ndarray:
        """The new jobs' rows' nodes: their primed start's (a job's attempts start from its
        prompt's row, or a blend's rows), or each its own where the cache cannot keep it."""
        primes: dict[tuple[int, int], Attempts] = {}  # each primed start once: jobs of one prompt share its
        for a in new:                                 # arrays (its Model's, or one message's to a worker)
            primes.setdefault((id(a.prompt_logits), id(a.prompt_state)), a)
        place = {key: k for k, key in enumerate(primes)}
        of_job = [place[id(a.prompt_logits), id(a.prompt_state)] for a in new]
        per_prime = [np.atleast_2d(a.prompt_logits) for a in primes.values()]  # (1, V), or (P, V) for a blend
        logits = np.concatenate(per_prime).astype(np.float32, copy=False)  # (P, V)
        primed = self.stepper.to_rows(new[0].prompt_state if len(primes) == 1 else
                                      self.stepper.concat([a.prompt_state for a in primes.values()]))  # (P, S)
        if len(logits) == len(primes):  # one primed row a prompt: its jobs' attempts all start there
            rows = np.repeat(np.array(of_job), [len(a.indices) for a in new])
        else:
            offsets = np.cumsum([0] + [len(x) for x in per_prime[:-1]])
            rows = np.concatenate([offsets[k] + a.primed_rows() for k, a in zip(of_job, new)])
        if self.cache is None:
            self.cache = PrefixCache(self.stepper, logits.shape[1], primed.shape[1], self.prefix_memory)
        starts, self.rows.node = self.cache.start(primed, logits, self.rows.node)
        nodes = starts[rows]
        own = np.flatnonzero(nodes < 0)
        if own.size:
            nodes[own] = self.cache.own(logits[rows[own]], primed[rows[own]])
        return nodes

    def _new_rows(self, jobs: list[int], new: list[Attempts], groups: list[int]) -> Rows:
        """New jobs' rows as they start: each job's values repeated, each row its own attempt."""
        counts = np.array([len(a.indices) for a in new])
        per_job = np.repeat(np.array([(j, a.steps, a.newline, a.guide.start if a.guide else 0, g,
                                       a.guide is not None and (a.guide.guided or a.cfg.temperature == 0),
                                       a.guide is not None) for j, a, g in zip(jobs, new, groups)],
                                     dtype=np.int64), counts, axis=0).T  # (7, n): one job's values a column
        n = per_job.shape[1]
        first = np.repeat(np.cumsum(counts) - counts, counts)
        zeros = np.zeros(n, dtype=np.float64)
        return Rows(job=per_job[0], slot=np.arange(n, dtype=np.int64) - first,
                    key=np.repeat(np.array([a.key for a in new], dtype=np.uint64), counts),
                    index=np.concatenate([a.indices for a in new]).astype(np.int64, copy=False),
                    t=np.zeros(n, dtype=np.int64), limit=per_job[1], newline=per_job[2], dfa=per_job[3],
                    group=per_job[4], masking=per_job[5].astype(bool), guided=per_job[6].astype(bool),
                    logp=zeros, kept=zeros.copy(), rejected=np.zeros(n, dtype=bool),
                    node=np.full(n, -1, dtype=np.int64))

    def _finish(self, ended: np.ndarray) -> list[tuple[int, Results]]:
        """Hand the ended rows' results to their jobs; return the jobs now complete. (A server's
        step ends rows of dozens of jobs, a few each: the rows are taken job by job in one sorted
        pass, each row's values as Python scalars, rather than with numpy calls per job.)"""
        r = self.rows
        ended = ended[np.argsort(r.job[ended], kind="stable")]  # job by job
        jobs, slots, logp, scored, kept = r.job[ended], r.slot[ended], r.logp[ended], r.t[ended], r.kept[ended]
        bounds = [0, *(np.flatnonzero(jobs[1:] != jobs[:-1]) + 1).tolist(), len(ended)]
        texts = [None if rejected else text for text, rejected in zip(texts_of(self.out[ended]), r.rejected[ended].tolist())]
        slot_list, logp_list, scored_list, kept_list = slots.tolist(), logp.tolist(), scored.tolist(), kept.tolist()
        done = []
        for j, a, b in zip(jobs[bounds[:-1]].tolist(), bounds[:-1], bounds[1:]):
            job = self.jobs[j]
            res = job.results
            for slot, text in zip(slot_list[a:b], texts[a:b]):
                res.texts[slot] = text
            if b - a > 8:  # many rows (a bulk chunk's): three numpy calls; a few: one by one, cheaper
                res.logp[slots[a:b]], res.scored[slots[a:b]], res.kept[slots[a:b]] = logp[a:b], scored[a:b], kept[a:b]
            else:
                for i in range(a, b):
                    slot = slot_list[i]
                    res.logp[slot], res.scored[slot], res.kept[slot] = logp_list[i], scored_list[i], kept_list[i]
            job.remaining -= b - a
            if job.remaining == 0:
                done.append((j, res))
                del self.jobs[j]
                if job.attempts.on_char is not None:
                    self.streaming.remove(j)
        return done

    def _keep(self, keep: np.ndarray) -> None:
        """Drop the ended rows (and the settings no row uses any more)."""
        self.rows = self.rows.take(keep)
        self.reach = int(self.rows.t.max()) if keep.size else 0
        width = self.out.shape[1]
        while width > OUT_WIDTH and self.reach < width // 4:  # the long rows have ended: half the columns
            width //= 2
        self.out = self.out[keep, :width]
        if len(self.groups) == 1 and keep.size:
            return
        present = set(self.rows.group.tolist())  # (np.unique would import numpy.ma: 10 ms of start-up)
        self.groups = {k: v for k, v in self.groups.items() if v[0] in present}


class _Job:
    """One job in a RowEngine: its attempts, and what they produced so far."""

    def __init__(self, attempts: Attempts):
        self.attempts = attempts
        self.remaining = len(attempts.indices)
        self.results = Results.empty(self.remaining)


def run_jobs(stepper: Stepper, vocab: Vocab, jobs: list[Attempts]) -> list[Results]:
    """Advance the rows of all `jobs` together until each has ended (a RowEngine run dry)."""
    engine = RowEngine(stepper, vocab)
    ids = [engine.add(a) for a in jobs]
    done: dict[int, Results] = {}
    while engine.busy:
        done.update(engine.step())
    return [done[j] for j in ids]


def _draw(logits: np.ndarray, cfg: SampleConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rows' log-normalisers and cumulative probabilities at a plain setting (temperature > 0):
    what log_normalizer and inverse_cdf(sampling_probs(...)) compute, for RowEngine._node_draws."""
    return log_normalizer(logits), np.cumsum(sampling_probs(logits, cfg.temperature, cfg.top_k, cfg.top_p), axis=-1)


def _pick_group(logits: np.ndarray, cfg: SampleConfig, keys: np.ndarray, indices: np.ndarray,
                t: np.ndarray) -> np.ndarray:
    """Next ids of rows sharing settings: argmax at temperature 0, else an inverse-CDF pick with
    their random numbers."""
    if cfg.temperature == 0:
        return logits.argmax(axis=-1)
    p = sampling_probs(logits, cfg.temperature, cfg.top_k, cfg.top_p)
    return inverse_cdf(p, uniforms(keys, indices, t))
