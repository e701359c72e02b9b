"""Constraints on line samples, compiled into one automaton over the vocabulary's characters.

A line sample (prompt included, without its newline) must have a length in [min_len, max_len],
end with `ends_with`, contain every `contains` text and fully match `regex`. Each of the text
constraints is a regular language: a text to contain or end with is a KMP automaton, a regex
interegular's finite automaton, and their product, read over the model's own characters, is a
DFA whose transitions are a dense table (state, id) -> state. Length is not in the DFA: a table
`feasible[n, s]` says whether, from state s with n characters written, some accepted sample of
allowed length can still be reached. Then at every step the characters worth drawing are exactly
those whose next state is feasible one character later, and the newline is allowed only in an
accepting state of allowed length.

Supported regular expression syntax is Python's `re` without anchors-in-the-middle, lookbehind,
backreferences and word boundaries (interegular's subset): literals and escapes, `.`, classes
`[a-z]`/`[^...]`/`\\w\\d\\s`, groups `( )` and `(?: )`, `|`, `* + ? {m,n}`, `(?i)`, and lookahead
(`(?=...)`, `(?!...)`; one reaching past the pattern's end stands for that many more characters). A leading `^`
and a trailing `$` are accepted and change nothing: the whole sample must match anyway.
"""

from __future__ import annotations

import copy
import math
import re
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from ..config import SampleConfig
from ..errors import UsageError
from ..tokenizer import Vocab, describe_chars

MAX_STATES = 20_000  # product automaton size beyond which the constraints are refused as too complex
BOUNDED_KEPT = 16  # length caps whose feasibility an automaton keeps (a cap is a prompt's length + --length)
_BOUNDED_LOCK = threading.Lock()  # their dicts' (a server's requests ask from several threads; an
# automaton's own lock would not pickle to the worker processes)
DEAD = -1


@dataclass(frozen=True)
class Constraints:
    """What a line sample must satisfy; every field None/empty means no constraint."""

    min_len: Optional[int] = None
    max_len: Optional[int] = None
    ends_with: Optional[str] = None
    contains: tuple[str, ...] = ()
    regex: Optional[str] = None

    def __bool__(self) -> bool:
        return any((self.min_len, self.max_len is not None, self.ends_with, self.contains, self.regex))

    @classmethod
    def of(cls, cfg: SampleConfig) -> "Constraints":
        """The constraints a chargen.config.SampleConfig sets (it has checked them)."""
        return cls(min_len=cfg.min_len, max_len=cfg.max_len, ends_with=cfg.ends_with, contains=tuple(cfg.contains),
                   regex=cfg.regex)

    def names(self) -> list[str]:
        """The options given, named for messages (each front end spells them)."""
        named = [("`min_len`", self.min_len), ("`max_len`", self.max_len), ("`ends_with`", self.ends_with),
                 ("`contains`", self.contains), ("`regex`", self.regex)]
        return [flag for flag, value in named if value not in (None, "", ())]


def _strip_anchors(pattern: str) -> str:
    if pattern.startswith("^"):
        pattern = pattern[1:]
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1]
    return pattern


def _kmp(text: str, chars: list[str], absorb: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """A text to contain (absorb: its last state keeps) or to end with, as the KMP automaton over
    `chars` (every character of `text` among them): state k means the sample so far ends with
    text[:k], its longest such prefix; accepting: k = len(text). O(len(text) x len(chars)), where
    interegular's `.*text.*` took time quadratic in the text (10,000 characters: minutes).
    websampler.js's kmp() builds the same."""
    column = {c: j for j, c in enumerate(chars)}
    ids = [column[c] for c in text]
    table = np.zeros((len(text) + 1, len(chars)), dtype=np.int64)
    restart = 0  # the state the text so far falls back to: where text[1:k] leads
    for k, i in enumerate(ids):
        if k:
            table[k] = table[restart]
            restart = int(table[restart, i])
        table[k, i] = k + 1
    table[-1] = len(text) if absorb else table[restart]
    accepting = np.zeros(len(text) + 1, dtype=bool)
    accepting[-1] = True
    return table, accepting, 0


def _component(flag: str, pattern: str, vocab: Vocab, chars: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """One regular expression as a dense DFA over `chars`: (transitions (S, C), accepting (S,), start)."""
    shown = repr(pattern if len(pattern) <= 80 else pattern[:60] + "...")  # an error stays a readable line
    try:
        with warnings.catch_warnings():  # re's FutureWarnings ("possible nested set") are not the user's concern
            warnings.simplefilter("ignore")
            re.compile(pattern)
    except (re.error, OverflowError) as exc:  # (a repeat past 2**32 - 2: OverflowError)
        raise UsageError(f"{flag} {shown} is not a valid regular expression: {exc}") from None
    except RecursionError:  # Python's own parser recurses once per group
        raise UsageError(f"{flag} {shown} nests its groups too deeply") from None
    # Imported here: only a text constraint needs it, and `chargen sample` starts without it.
    from interegular import parse_pattern
    from interegular.fsm import anything_else

    try:
        with _bounded_crawl():
            fsm = parse_pattern(pattern).to_fsm()
    except RecursionError:  # interegular's parser and its automata recurse over the groups
        raise UsageError(f"{flag} {shown} nests its groups too deeply") from None
    except _TooManyStates:
        raise UsageError(f"{flag} {shown} needs more than {MAX_STATES:,} automaton states; simplify it "
                         f"(a repeat such as {{1000}}, or .* before a fixed count, makes automata large)") from None
    except Exception as exc:  # interegular signals unsupported syntax with its own exception types
        why = str(exc).strip() or type(exc).__name__
        raise UsageError(f"{flag} {shown} uses syntax chargen cannot compile ({why}); "
                         f"see `chargen sample --help` for what is supported") from None
    states = sorted(fsm.states, key=repr)
    number = {s: i for i, s in enumerate(states)}
    symbols = []
    for ch in chars:
        try:
            symbols.append(fsm.alphabet[ch])
        except KeyError:
            symbols.append(fsm.alphabet[anything_else] if anything_else in fsm.alphabet else None)
    table = np.full((len(states), len(chars)), DEAD, dtype=np.int64)
    for s in states:
        row = fsm.map.get(s, {})
        for j, sym in enumerate(symbols):
            if sym is not None and sym in row:
                table[number[s], j] = number[row[sym]]
    accepting = np.array([s in fsm.finals for s in states])
    return table, accepting, number[fsm.initial]


class _TooManyStates(Exception):
    pass


_CRAWL_LOCK = threading.Lock()


@contextmanager
def _bounded_crawl():
    """interegular builds every automaton with `interegular.fsm.crawl`, which enumerates the
    states reachable from the initial one with no bound (and finds each in a list: quadratic).
    `a{1000000}` then takes hours and `.*a.{20}` needs 2**21 states, so a pattern anyone types (or
    a client of `chargen serve` sends) would hang the process. For one compile, crawl is this one:
    the same states in the same order, found by hash, and an error past MAX_STATES."""
    import interegular.fsm as fsm_module

    original = fsm_module.crawl

    def crawl(alphabet, initial, final, follow):
        states, index, finals, table = [initial], {_hashable(initial): 0}, set(), {}
        i = 0
        while i < len(states):
            state = states[i]
            if final(state):
                finals.add(i)
            table[i] = {}
            for transition in alphabet.by_transition:
                try:
                    nxt = follow(state, transition)
                except fsm_module.OblivionError:
                    continue
                key = _hashable(nxt)
                j = index.get(key)
                if j is None:
                    if len(states) >= MAX_STATES:
                        raise _TooManyStates
                    j = index[key] = len(states)
                    states.append(nxt)
                table[i][transition] = j
            i += 1
        return fsm_module.FSM(alphabet=alphabet, states=range(len(states)), initial=0, finals=finals, map=table,
                              __no_validation__=True)

    with _CRAWL_LOCK:
        fsm_module.crawl = crawl
        try:
            yield
        finally:
            fsm_module.crawl = original


def _hashable(state):
    """interegular's crawled states (sets, dicts, tuples of the FSMs' integer states) as keys that
    are equal exactly when the states are: crawl compares them with ==."""
    if isinstance(state, dict):
        return frozenset(state.items())
    return frozenset(state) if isinstance(state, set) else state


class Automaton:
    """The constraints compiled for one vocabulary: which ids may come next, state by state.

    States are numbered 0..S-1; `trans` (S, V) holds the next state or DEAD (the newline's
    column is always DEAD: it ends the sample instead). Length n counts the sample's characters
    so far, the prompt included; `feasible[n, s]` for n in 0..max_len+1.
    """

    def __init__(self, constraints: Constraints, vocab: Vocab, limit: int = 0):
        self.constraints = constraints
        self.newline = vocab.index.get("\n", DEAD)
        if self.newline == DEAD:
            raise UsageError("this model's vocabulary has no newline, so its samples have no end to constrain")
        for flag, text in [("`ends_with`", constraints.ends_with)] + [("`contains`", c) for c in constraints.contains]:
            missing = vocab.unknown_chars(text or "")
            if missing:
                raise UsageError(f"{flag} {text!r} holds {describe_chars(missing)}, not in the model's "
                                 f"vocabulary: no sample can satisfy it")
        self.min_len = max(constraints.min_len or 0, 1)  # line samples are never empty
        self.max_len = min(constraints.max_len, limit) if constraints.max_len is not None else limit
        chars = [c if i != self.newline else None for i, c in enumerate(vocab.chars)]
        text_chars = [c for c in chars if c is not None]
        columns = [i for i, c in enumerate(chars) if c is not None]
        if max(map(len, [*constraints.contains, constraints.ends_with or ""]), default=0) >= MAX_STATES:
            raise _too_many_states()  # (each of a text's states is reachable: its automaton alone is too large)
        parts = [_kmp(c, text_chars, absorb=True) for c in constraints.contains if c]
        if constraints.ends_with:
            parts.append(_kmp(constraints.ends_with, text_chars, absorb=False))
        if constraints.regex is not None:
            parts.append(_component("`regex`", _strip_anchors(constraints.regex), vocab, text_chars))
        trans, accepting, self.start_state = _product(parts, len(text_chars))
        self.trans = np.full((len(trans), len(vocab)), DEAD, dtype=np.int64)
        self.trans[:, columns] = trans
        self.accepting = accepting
        self._live = self.trans >= 0  # (S, V): transitions that exist
        self._target = np.where(self._live, self.trans, 0)  # (S, V): their states, DEAD read as 0 and masked
        self._bounded: dict[int, Automaton] = {}
        self.feasible = self._feasibility()

    def bounded(self, limit: int) -> "Automaton":
        """The same automaton with samples capped at `limit` characters (or --max-len if lower).
        Kept per limit, the BOUNDED_KEPT latest: checking the prompts up front and drawing then share
        one table (and a server's prompts of every length do not pile up tables)."""
        c = self.constraints
        max_len = min(c.max_len, limit) if c.max_len is not None else limit
        with _BOUNDED_LOCK:
            other = self._bounded.pop(max_len, None)
        if other is None:
            other = copy.copy(self)
            other.max_len = max_len
            other.feasible = other._feasibility()
        with _BOUNDED_LOCK:
            self._bounded[max_len] = other  # (the latest last)
            while len(self._bounded) > BOUNDED_KEPT:
                del self._bounded[next(iter(self._bounded))]
        return other

    @property
    def n_states(self) -> int:
        return len(self.accepting)

    def _feasibility(self) -> "Feasibility":
        """feasible[n, s]: from state s after n characters, an accepted end within the bounds is reachable."""
        return Feasibility(self.accepting, lambda row: (self._live & row[self._target]).any(axis=1),
                           self.min_len, self.max_len)

    def start(self, prompt: str, vocab: Vocab) -> int:
        """The state after the prompt; a UsageError if no sample that starts with it can satisfy the constraints."""
        state = self.start_state
        for i in vocab.encode(prompt).tolist():
            state = int(self.trans[state, i])
            if state == DEAD:
                break
        n = len(prompt)
        if n > self.max_len:
            raise UsageError(f"the prompt {prompt!r} is longer than the {self.max_len} characters a sample may have")
        if state == DEAD or n > self.max_len or not self.feasible[n, state]:
            what = f"starts with the prompt {prompt!r} and " if prompt else ""
            raise UsageError(f"no sample {what}satisfies {' '.join(self.constraints.names())} "
                             f"within {self.max_len} characters with this model's vocabulary")
        return state

    def allowed(self, states: np.ndarray, n: np.ndarray | int) -> np.ndarray:
        """(B,) states after n characters -> (B, V) bool: the ids that keep a complete sample reachable."""
        nxt = self.trans[states]  # (B, V)
        n = np.broadcast_to(np.asarray(n), states.shape)
        ok = (nxt >= 0) & self.feasible[np.minimum(n + 1, self.max_len + 1)[:, None], np.maximum(nxt, 0)]
        ok[:, self.newline] = self.accepting[states] & (n >= self.min_len) & (n <= self.max_len)
        return ok

    def advance(self, states: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Next states; a newline (or a forbidden id) gives DEAD."""
        return self.trans[states, ids]

    def count(self, start: int, n0: int, enough: float = math.inf) -> float:
        """How many distinct samples from `start` after n0 characters satisfy the constraints (as a
        float), or a number of at least `enough` once that many are found: counted length by length
        from n0 up, so that a --length of millions costs steps only while the count is short of
        `enough` and some state is still reachable."""
        source, column = np.nonzero(self._live)
        target = self.trans[source, column]
        ways = np.zeros(self.n_states)  # ways[s]: the texts of the current length that lead to s
        ways[start] = 1.0
        found = 0.0
        with np.errstate(over="ignore"):  # beyond 1e308 ways is inf: more than anyone asks for
            for n in range(n0, self.max_len + 1):
                if n >= self.min_len:
                    found += ways[self.accepting].sum()
                if found >= enough or n == self.max_len or not ways.any():
                    break
                ways = np.bincount(target, weights=ways[source], minlength=self.n_states)
        return float(found)


def _too_many_states() -> UsageError:
    return UsageError(f"the constraints together need more than {MAX_STATES:,} automaton states; "
                      f"simplify the `regex`, drop a `contains` or shorten a text")


def _product(parts: Sequence[tuple[np.ndarray, np.ndarray, int]], n_chars: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The product DFA of the components, over the reachable tuples of states (one state if none)."""
    if not parts:
        return np.zeros((1, n_chars), dtype=np.int64), np.ones(1, dtype=bool), 0
    start = tuple(p[2] for p in parts)
    number = {start: 0}
    order = [start]
    rows = []
    i = 0
    while i < len(order):
        tup = order[i]
        nxt = np.stack([p[0][s] for p, s in zip(parts, tup)])  # (components, C)
        dead = (nxt == DEAD).any(axis=0)
        row = np.full(n_chars, DEAD, dtype=np.int64)
        for j in np.flatnonzero(~dead).tolist():
            key = tuple(nxt[:, j].tolist())
            if key not in number:
                if len(order) >= MAX_STATES:
                    raise _too_many_states()
                number[key] = len(order)
                order.append(key)
            row[j] = number[key]
        rows.append(row)
        i += 1
    accepting = np.array([all(p[1][s] for p, s in zip(parts, tup)) for tup in order])
    return np.stack(rows), accepting, 0


def line_samples_only(subject: str, line_oriented: Optional[bool], verb: str = "apply") -> UsageError:
    """The one wording of "this option needs line samples": what to do depends on whether the
    model writes lines (then the caller asked for prose) or prose (None: not known)."""
    fix = {True: "drop `no_lines`", False: "this model writes prose: pass `lines` to sample lines from it",
           None: "pass `lines` to sample lines"}[line_oriented]
    return UsageError(f"{subject} {verb} to line samples only; {fix}")


class Feasibility:
    """feasible[n, s] for n in 0..max_len+1 (numpy's indexing: n and s arrays that broadcast), held
    as the rows that differ; the table itself, max_len + 2 rows, took minutes and gigabytes at a
    --length of 10^9.

    Read from max_len + 1 (no state: no character is left) down, each row is a function of the one
    above it: at min_len and above, a state is feasible where it can end or go on to a feasible
    state; below, where it can go on. So from the first row that repeats an earlier one of the same
    rule on, the rows repeat. At min_len and above the rows only grow, and stop changing within S + 1
    rows; below, they cycle (a period of 2 for `(ab)*`) or die out.
    """

    def __init__(self, accepting: np.ndarray, go: Callable[[np.ndarray], np.ndarray], min_len: int, max_len: int):
        self.max_len = max_len
        self.low = min(min_len, max_len + 1)  # the first length that may end
        upper = _repeating(np.zeros_like(accepting), lambda row: accepting | go(row), max_len + 2 - self.low)
        lower = _repeating(go(upper.row(max_len + 1 - self.low)), go, self.low)
        self.upper, self.lower = upper, lower
        self.table = np.concatenate([upper.rows, lower.rows])  # (R, S)

    def __getitem__(self, key: tuple) -> np.ndarray:
        n, s = key
        n = np.asarray(n)
        row = np.where(n >= self.low, self.upper.index(self.max_len + 1 - n),
                       len(self.upper.rows) + self.lower.index(self.low - 1 - n))
        return self.table[row, s]


@dataclass
class _Repeating:
    """A run of rows, each a function of the one before: the rows up to the first repeat, and from
    `start` on every `period`-th row the same."""

    rows: np.ndarray  # (R, S)
    start: int
    period: int

    def index(self, k: np.ndarray) -> np.ndarray:
        """The stored row of the k-th row."""
        return np.where(k < len(self.rows), k, self.start + (k - self.start) % self.period)

    def row(self, k: int) -> np.ndarray:
        return self.rows[int(self.index(np.asarray(k)))]


def _repeating(first: np.ndarray, step: Callable[[np.ndarray], np.ndarray], count: int) -> _Repeating:
    """The `count` rows first, step(first), step(step(first)), ...: stored up to the first repeat."""
    rows: list[np.ndarray] = []
    seen: dict[bytes, int] = {}
    row = first
    for k in range(count):
        if row.tobytes() in seen:
            start = seen[row.tobytes()]
            return _Repeating(np.array(rows), start, k - start)
        seen[row.tobytes()] = k
        rows.append(row)
        row = step(row)
    return _Repeating(np.array(rows).reshape(len(rows), len(first)), 0, 1)  # (no row repeats: every one is stored)


# --- the constraints of one prompt --------------------------------------------------------------


@dataclass
class Guide:
    """Constraints for one prompt: the automaton, its state after the prompt, and how to use it.

    exact (guided=False): draw from the model's distribution and reject a sample at the first
    character from which the constraints can no longer be met; accepted samples then follow the
    model's distribution conditioned on the constraints. guided: draw only among the allowed
    characters, renormalised; no draw is wasted, but the distribution is not the conditional one.
    """

    automaton: "Automaton"
    start: int
    n0: int  # characters of the prompt
    guided: bool = False

    @property
    def steps(self) -> int:
        return self.automaton.max_len - self.n0 + 1  # the last step can only be the newline


def guide_for(automaton: Optional[Automaton], vocab: Vocab, prompt: str, cfg: SampleConfig,
              lines: bool) -> Optional[Guide]:
    """The constraints for this prompt, with the length cap the sample options set; checked up front."""
    if automaton is None:
        return None
    if not lines:
        raise line_samples_only(f"constraints ({', '.join(Constraints.of(cfg).names())})", line_oriented=None)
    bounded = automaton.bounded(len(prompt) + cfg.max_length(lines))
    start = bounded.start(prompt, vocab)
    if cfg.unique:
        possible = bounded.count(start, len(prompt), enough=cfg.num)
        if possible < cfg.num:
            raise UsageError(f"only {int(possible):,} distinct samples satisfy the constraints, fewer than the "
                             f"{cfg.num:,} asked for with `unique`; ask for fewer (`top` {int(possible)} lists them all)")
    return Guide(bounded, start, len(prompt), guided=cfg.guided)
