"""The most likely line samples, best first: exact best-first (uniform-cost) search.

Every character multiplies a sample's probability by at most 1, so a prefix is never less likely
than any sample that extends it. The search keeps a priority queue of prefixes ordered by their
log-probability; the first complete sample (a prefix followed by the newline) to reach the front
is more likely than anything still queued or any extension of it: the exact best, then the next.
No beam, so nothing is pruned on a guess; the only bound is memory (`memory`, SEARCH_MEMORY),
and samples printed before it is reached are exact.

Under a blend of labels (a mixture: P(x) = sum over labels l of w_l P_l(x)) the same holds: a
prefix's mixture probability sum_l w_l P_l(prefix) bounds every sample that extends it. A node then
carries a recurrent state and a log-probability per label, and is ranked by their mixture. Not
every label's, though: a blend of hundreds (the base model's 267 labels, or its 53 "first" ones)
would hold hundreds of states a prefix, most for labels that give it next to nothing. A prefix
drops its least likely labels while their mass stays below e^-DROP (6e-6) of its mixture, and
its descendants never take them back; their mass w_l P_l(prefix) is kept as a frozen bound
(P_l never grows along a path, so it bounds those labels' part of every extension). A prefix's
rank is then an upper bound on the mixture probability of anything extending it, and a complete
sample whose rank holds a frozen bound is scored exactly under the labels dropped (a forward pass
of its characters from their primed states) and queued again at its exact probability, never
higher: the samples printed are still the exact best, in order (tests/test_labels.py holds them
to enumeration with labels dropped at 0.5 nats). A node keeps its states and its labels' parts,
not their next-character distributions: those are the network's head again on its states when
a child is expanded.

The floor. Every complete sample the search meets as a child (a prefix whose newline the
constraints allow) is a candidate whose probability is known at once, at least under the labels
its prefix keeps: the n-th likeliest met so far is a floor under the n-th sample the search will
yield. Nothing below the floor can ever be needed, so a new prefix keeps only the children that
may reach it (none: no node; memory the search used to fill with the children of prefixes far
below its answer: `--top 50 --label city --ends-with o` from the base model stopped at its 256 MB
and now finds all 50). And a prefix also drops labels while the mass dropped on its whole path
stays below e^-BEHIND of the floor: a label that will never matter near the answer. Its bound
then stays within e^-BEHIND of the floor above the truth, so a subtree is hardly ever expanded for
it, while the rows saved are most of a wide blend's (the 52 surname labels, `--top 1 --regex
'[A-Z][a-z]*(el|ia)'`: 3.0x faster; `docs/benchmarks.md`, "The floor"). The complete samples
queued under such a bound are scored again together, the likeliest RESCORE_BATCH at once, one
pass of the network for all.

Memory: the prefixes' own data (text, labels' parts, sorted children) may take `memory` bytes
(SEARCH_MEMORY), past which the search stops with an error; their recurrent states are a cache of
`cache` bytes (SEARCH_CACHE): a ring of rows, written a step's block at a time, the oldest written
over first (chunks that live as long as the search, so that a long one does not fragment the heap
with blocks freed among the prefixes' small arrays: a resident size twice its live data,
measured). A prefix whose states were written over gets them back by running its last characters
from its nearest ancestor that still has them (the root's are kept apart, always), then keeps
them in a new block: a prefix in use is computed again at most once each time the ring turns
over. So a search that needs more states than fit (the base model's 267 labels with no
`--label`: hundreds of states a prefix) is slower, not refused.

Two things keep it cheap. A prefix's children are queued lazily: its characters are sorted once,
and only its best unvisited child sits in the queue (popping child r queues child r + 1). And
prefixes are expanded in batches: up to `batch` of the front's incomplete prefixes go through
the network in one step, which is safe because a complete sample is only printed once nothing
pending could beat it. A complete sample that reaches the front while prefixes are pending is
held aside, not a reason to step at once: names end often, and stepping there made steps of 3
prefixes where one takes 256 (`--top 30000` from the names model: 20,948 steps, now 1,102; the
prefixes expanded the same but for the last step's).
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

from ..errors import SamplingError
from ..tokenizer import Vocab
from .constraints import Automaton
from .drawing import Sample, prime
from .engine import Stepper, log_softmax

SEARCH_MEMORY = 256 << 20  # bytes of the prefixes' own data the search holds at most
SEARCH_CACHE = 256 << 20  # bytes of the prefixes' recurrent states it keeps at most (the others are computed again)
NODE_BYTES = 750  # a prefix's memory besides its arrays' data (object, text, array headers, queue entry): measured
SEARCH_BATCH = 256  # prefixes expanded together in one network step (at most: rows, SEARCH_ROWS)
CHUNK_BYTES = 8 << 20  # the states' ring is allocated in chunks of about this many bytes (or one step's rows)
SEARCH_ROWS = 2048  # or fewer, where they keep many labels: at most this many rows (a label a prefix) a step
DROP = 12.0  # nats: a prefix drops its least likely labels while their mass stays below e^-DROP of its mixture
RESCORE_BATCH = 64  # complete samples rescored together (the likeliest queued at a bound)
BEHIND = 1.0  # nats: ... or below e^-BEHIND of the n-th likeliest complete sample found so far


@dataclass(slots=True)
class _Node:
    text: str  # the sample so far, prompt included
    parent: int  # the node it extends (-1: the root, the prompt)
    dfa: int
    block: int  # the node's recurrent states are rows row .. row + len(labels) - 1 of the ring's block (-1: the root's)
    row: int
    labels: np.ndarray  # the labels it keeps, in order (a blend's; else [0])
    parts: np.ndarray  # (A,) log(w_l) + log P_l(text) for each label kept
    frozen: float  # log of the mass of the labels dropped on its path (-inf: none): a bound, not exact
    ids: np.ndarray  # allowed next ids, likeliest first
    child_logprobs: np.ndarray  # (k,) each child's mixture log-probability (a bound where frozen), same order


def logsumexp(a: np.ndarray) -> np.ndarray:
    """log(sum(exp(a), axis=0)); exactly a[0] for one row."""
    if a.shape[0] == 1:
        return a[0]
    m = a.max(axis=0)
    return m + np.log(np.exp(a - m).sum(axis=0))


def most_likely(stepper: Stepper, vocab: Vocab, prompt: str, n: int, automaton: Automaton, *,
                starts: Optional[list[Optional[list[np.ndarray]]]] = None, weights: Optional[np.ndarray] = None,
                names: Optional[list[str]] = None, skip: Callable[[str], bool] = lambda text: False,
                memory: int = SEARCH_MEMORY, cache: int = SEARCH_CACHE, batch: int = SEARCH_BATCH,
                drop: float = DROP, behind: float = BEHIND,
                progress: Optional[Callable[[int], None]] = None) -> Iterator[Sample]:
    """Yield the n most probable complete line samples starting with `prompt`, best first.

    `automaton` (already bounded to a maximum length) says which samples count; `skip` drops
    complete samples (--novel, --exclude) without ending the search. `starts` holds the start
    state lines begin from (default: one, zeros); a blend of labels gives each label's and its
    weight (`weights`, summing to 1): the samples are then ranked by their mixture probability
    (a prefix's least likely labels dropped from it while their mass stays below e^-`drop` of its
    mixture, as a bound, or while the mass dropped on its path stays below e^-`behind` of the floor),
    and each one's `label` is that of `names` (the labels') which gives it most of its probability.
    The prefixes' data may take `memory` bytes, past which it stops with an error; their recurrent
    states (one a label a prefix keeps) are a cache of `cache` bytes.
    `progress`, if given, is told the number of prefixes expanded after each network step.
    """
    if starts is None:
        starts = [None]
    if weights is None:
        weights = np.ones(1)
    search = _Search(stepper, vocab, automaton, prompt, starts, np.log(np.asarray(weights, dtype=np.float64)), batch,
                     drop, cache, progress, n, skip, behind)
    found = 0
    while found < n:
        entry = search.pop()
        if entry is None:
            return  # the language holds fewer samples than asked
        neg_lp, node, rank, exact = entry
        next_id = int(search.nodes[node].ids[rank])
        if next_id != automaton.newline:
            if search.node_bytes > memory:
                fewer = ", constrain more or draw from fewer labels (`label`)" if len(starts) > 1 else " or constrain more"
                raise SamplingError(f"the search for the {n:,} likeliest samples stopped after {search.expanded:,} "
                                    f"expansions with {found:,} found (those are exact): its prefixes filled its "
                                    f"{memory / (1 << 20):.3g} MB; ask for fewer{fewer}")
            search.defer(node, rank)
        elif not exact:
            search.rescore(node, rank)  # queued again at its exact probability
        elif not skip(search.nodes[node].text):
            found += 1
            text = search.nodes[node].text
            label = None if names is None else names[0 if len(names) == 1 else
                                                     int(np.argmax(search.label_logprobs(node)))]
            yield Sample(text=text, prompt=prompt, logprob=-neg_lp, n_chars=len(text) - len(prompt) + 1, label=label)


class _Ring:
    """The prefixes' recurrent states: `capacity` rows (the stepper's to_rows), written in blocks
    one after another, starting over at the first row when a block does not fit before the last;
    a block is gone once a later one is written over its first row. The rows are chunks of
    `chunk` rows, allocated as the blocks reach them (a block never straddles two): under
    CHUNK_BYTES each, so that a program that keeps freed memory (chargen.allocator) takes them
    from its heap, warm, search after search."""

    def __init__(self, capacity: int, chunk: int):
        self.chunk = min(chunk, capacity)  # 0: nothing is kept
        self.capacity = capacity // self.chunk * self.chunk if self.chunk else 0
        self.chunks: list[np.ndarray] = []  # (chunk, S) float32 each
        self.head = 0  # where the next block goes
        self.spans: list[Optional[tuple[int, int]]] = []  # each block's (first row, rows); None once gone
        self.live: deque[int] = deque()  # the blocks not gone, oldest first

    def keep(self, rows: np.ndarray) -> int:
        """Write a block (rows, S); its number (gone at once if it is larger than a chunk)."""
        n = rows.shape[0]
        self.spans.append(None)
        if n > self.chunk:
            return len(self.spans) - 1
        if self.head % self.chunk + n > self.chunk:  # on to the next chunk (or the first)
            end = self.head - self.head % self.chunk + self.chunk
            self._overwrite(self.head, end)
            self.head = end % self.capacity
        self._overwrite(self.head, self.head + n)
        k, at = divmod(self.head, self.chunk)
        if k == len(self.chunks):
            self.chunks.append(np.empty((self.chunk, rows.shape[1]), dtype=np.float32))
        self.chunks[k][at: at + n] = rows
        self.spans[-1] = (self.head, n)
        self.live.append(len(self.spans) - 1)
        self.head = (self.head + n) % self.capacity
        return len(self.spans) - 1

    def _overwrite(self, a: int, b: int) -> None:
        """The blocks that start in rows a..b-1 are gone. Those not gone lie in the order they were
        written, so those after the head (written before the ring last started over) come first."""
        while self.live and a <= self.spans[self.live[0]][0] < b:
            self.spans[self.live.popleft()] = None

    def alive(self, block: int) -> bool:
        return self.spans[block] is not None

    def read(self, block: int, start: int, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows `rows` (default: all from `start`) of a block not gone, after its `start` first:
        a view where they follow one another, so good only until the next block is written."""
        first, n = self.spans[block]
        k, at = divmod(first, self.chunk)
        return self.chunks[k][at + start: at + n] if rows is None else self.chunks[k][at + start + rows]


class _Search:
    """The queue of prefixes, their recurrent states (the root's, and a ring of the others', a row
    per label a node keeps) and the pending expansions."""

    def __init__(self, stepper: Stepper, vocab: Vocab, automaton: Automaton, prompt: str,
                 starts: list[Optional[list[np.ndarray]]], log_w: np.ndarray, batch: int = SEARCH_BATCH,
                 drop: float = DROP, cache: int = SEARCH_CACHE, progress: Optional[Callable[[int], None]] = None,
                 n: int = 1, skip: Callable[[str], bool] = lambda text: False, behind: float = BEHIND):
        self.stepper, self.vocab, self.automaton, self.batch, self.drop = stepper, vocab, automaton, batch, drop
        self.progress = progress
        # the n likeliest complete samples seen as children so far, each at its labels kept (no more than its
        # probability): the n-th is a floor under the n-th sample the search yields
        self.n, self.skip, self.behind, self.seen = n, skip, behind, []
        self.rescored: dict[int, np.ndarray] = {}  # a node's complete sample's label_logprobs, once rescored
        self.inexact: list[tuple[float, int, int]] = []  # (-bound, node, rank): complete samples queued at a bound
        self.requeued: set[int] = set()  # the nodes whose complete sample is queued again at its exact probability
        self.prompt, self.log_w = prompt, log_w
        start = automaton.start(prompt, vocab)
        primed = [prime(stepper, vocab, prompt, True, s) for s in starts]
        state = primed[0][1] if len(starts) == 1 else stepper.concat([st for _, st in primed])
        self.root = stepper.to_rows(state)  # (P, S): each label's primed, the root's states
        row = self.root[:1].nbytes
        # A chunk holds any block: a step's rows (at most SEARCH_ROWS, and the last prefix's labels).
        self.ring = _Ring(cache // row, max(CHUNK_BYTES // row, SEARCH_ROWS + len(starts)))
        self.node_bytes = 0  # the nodes' own memory (their arrays and NODE_BYTES each)
        self.nodes: list[_Node] = []
        # (-logprob, tie-break, node, rank of its child, exact): exact False where a frozen bound is in it
        self.queue: list[tuple[float, int, int, int, bool]] = []
        self.held: list[tuple[float, int, int, int, bool]] = []  # complete samples popped, waiting for a step (pop)
        self.pending: list[tuple[int, int]] = []  # (parent node, rank of the child) awaiting a step
        self.pending_rows = 0  # their parents' labels: the rows of their step
        self.counter = 0
        self.expanded = 0  # the prefixes whose children the network has given (the nodes are those kept of them)
        lsm = log_softmax(np.stack([lg for lg, _ in primed]))  # (P, V)
        self._add([prompt], [-1], [np.arange(len(starts))], [log_w], [-np.inf], [start], lsm, -1)

    def pop(self) -> Optional[tuple[float, int, int, bool]]:
        """The likeliest queued (-logprob, node, rank of its child, exact) that nothing pending can
        beat; None when exhausted.

        A complete sample at the front while prefixes are pending waits for their step (their
        children might beat it), and waits held aside: the prefixes queued after it are popped
        meanwhile and join the step, which would otherwise hold the few popped since the last
        complete one (names end often: 3 prefixes a step, where a step takes `batch`). A held
        sample goes out once nothing pending or queued can beat it; the prefixes popped past it
        are ones the search expands next anyway, unless it ends first (at most a step's worth)."""
        while True:
            if self.held and not self.pending and (not self.queue or self.held[0][:2] <= self.queue[0][:2]):
                neg_lp, _, k, rank, exact = heapq.heappop(self.held)
                return neg_lp, k, rank, exact
            if not self.queue:
                if not self.pending:
                    return None  # (nothing is held: it would have gone out above)
                self.expand()
                continue
            neg_lp, tie, k, rank, exact = self.queue[0]
            if exact and self.pending and int(self.nodes[k].ids[rank]) == self.automaton.newline:
                heapq.heappush(self.held, self._take())  # a pending prefix's children might beat it
                continue
            self._take()
            return neg_lp, k, rank, exact

    def _take(self) -> tuple[float, int, int, int, bool]:
        """Pop the queue's front, queueing the next child of its node in its place."""
        entry = heapq.heappop(self.queue)
        _, tie, k, rank, _ = entry
        node = self.nodes[k]
        if tie >= 0 and rank + 1 < node.ids.size:  # (an entry queued again after rescoring has tie < 0)
            self._push(-float(node.child_logprobs[rank + 1]), k, rank + 1, exact=node.frozen == -np.inf)
        return entry

    def defer(self, node: int, rank: int) -> None:
        self.pending.append((node, rank))
        self.pending_rows += self.nodes[node].labels.size
        if len(self.pending) >= self.batch or self.pending_rows >= SEARCH_ROWS:
            self.expand()

    def states(self, nodes: list[_Node]):
        """The nodes' states, one batch (a row per label each keeps, in order): those overwritten
        in the ring computed again (and written again) after the others are read."""
        restored, keep = self._restore([p for p in {id(p): p for p in nodes if not self._kept(p)}.values()])
        rows = [restored[id(p)] if id(p) in restored else self._rows(p)[: p.labels.size] for p in nodes]
        rows = np.concatenate(rows) if len(rows) > 1 else np.array(rows[0])  # a copy: the ring is written next
        keep()
        return self.stepper.from_rows(rows)

    def _kept(self, node: _Node) -> bool:
        return node.block < 0 or self.ring.alive(node.block)

    def _rows(self, node: _Node, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """Some of a node's rows (its labels' positions among those it keeps; default: from its
        first on), a view where they follow one another."""
        if node.block < 0:
            return self.root[node.row:] if rows is None else self.root[node.row + rows]
        return self.ring.read(node.block, node.row, rows)

    def _restore(self, nodes: list[_Node]) -> tuple[dict[int, np.ndarray], Callable[[], None]]:
        """The states (rows) of `nodes` (overwritten in the ring), by id: each computed again from
        its nearest ancestor whose states are kept, stepping the characters between, the longest
        runs first so that the rows still stepping are always the first ones; and what writes them
        to the ring as a new block (which may overwrite others)."""
        if not nodes:
            return {}, lambda: None
        runs = sorted((self._run(p) for p in nodes), key=lambda run: -run[0].size)  # (ids to step, node, rows)
        sizes = [p.labels.size for _, p, _ in runs]
        state = self.stepper.from_rows(np.concatenate([rows for _, _, rows in runs]))
        rows = self.stepper.to_rows(self._step_runs([ids for ids, _, _ in runs], sizes, state))
        starts = np.cumsum(sizes) - sizes

        def keep() -> None:
            block = self.ring.keep(rows)
            for (_, p, _), row in zip(runs, starts):
                p.block, p.row = block, int(row)

        return {id(p): rows[row: row + p.labels.size] for (_, p, _), row in zip(runs, starts)}, keep

    def _step_runs(self, runs: list[np.ndarray], sizes: list[int], state, each=None, ended_kept: bool = True):
        """Step runs of ids, the longest first, run i on the next `sizes[i]` rows of `state`: at step t
        the runs still going are the first ones. `each(t, going, logits)`, if given, is told each
        step's logits (the rows of the first `going` runs). The state after: every row's, a run that
        ended keeping its last (or with `ended_kept` False, only those of the runs that went on
        longest: the rows of the last step)."""
        live = sum(sizes)  # the rows in `state`
        for t in range(runs[0].size if runs else 0):
            going = sum(1 for ids in runs if ids.size > t)  # the first `going` runs
            rows = sum(sizes[:going])
            ids = np.repeat([ids[t] for ids in runs[:going]], sizes[:going])
            if rows == live:
                logits, state = self.stepper.step(ids, state)
            elif ended_kept:
                logits, stepped = self.stepper.step(ids, self.stepper.select(state, np.arange(rows)))
                state = self.stepper.concat([stepped, self.stepper.select(state, np.arange(rows, live))])
            else:
                logits, state = self.stepper.step(ids, self.stepper.select(state, np.arange(rows)))
                live = rows
            if each is not None:
                each(t, going, logits)
        return state

    def _run(self, node: _Node) -> tuple[np.ndarray, _Node, object]:
        """What computes a node's states again: the ids of its last characters, and the states (of
        the labels it keeps) of its nearest ancestor whose states are kept."""
        a = self.nodes[node.parent]
        while not self._kept(a):
            a = self.nodes[a.parent]  # the root's are always kept
        ids = self.vocab.encode(node.text[len(a.text):]).astype(np.int64)
        return ids, node, self._rows(a, np.searchsorted(a.labels, node.labels))  # (a copy) a subset of a's labels

    def lsm(self, states) -> np.ndarray:
        """Next-character log-probabilities (rows, V) from `states` (what their step gave: the
        network's head again, not kept, as a node's states are)."""
        return log_softmax(self.stepper.head(states))

    def kept(self, parts: np.ndarray, mixture: float, frozen: float) -> Optional[np.ndarray]:
        """Which labels a prefix with these `parts` (its mixture bound `mixture`, the mass dropped on its
        path `frozen`) keeps: all but the least likely ones whose mass stays below e^-drop of it, or
        with `frozen` below e^-behind of the floor, and the likeliest always (None: all)."""
        if parts.size == 1:
            return None
        order = np.argsort(parts, kind="stable")  # the least likely first
        keep = np.ones(parts.size, dtype=bool)
        least = np.logaddexp.accumulate(parts[order])
        keep[order[(least < mixture - self.drop) | (np.logaddexp(least, frozen) < self.floor() - self.behind)]] = False
        keep[order[-1]] = True
        return None if keep.all() else keep

    def expand(self) -> None:
        """One network step for every pending prefix (a row per label it keeps); their children join the queue."""
        parents = [self.nodes[k] for k, _ in self.pending]
        ids = np.array([p.ids[r] for p, (_, r) in zip(parents, self.pending)], dtype=np.int64)
        state = self.states(parents)
        sizes = np.array([p.labels.size for p in parents])
        ends = np.cumsum(sizes)
        flat = np.concatenate([p.parts for p in parents]) + self.lsm(state)[np.arange(ends[-1]), np.repeat(ids, sizes)]
        parts = [flat[e - a: e] for a, e in zip(sizes.tolist(), ends.tolist())]  # each child's, per label its parent keeps
        keeps = [self.kept(part, float(p.child_logprobs[r]), p.frozen)
                 for p, part, (_, r) in zip(parents, parts, self.pending)]
        if any(keep is not None for keep in keeps):
            every = np.concatenate([np.ones(a, dtype=bool) if keep is None else keep for a, keep in zip(sizes, keeps)])
            state = self.stepper.select(state, np.flatnonzero(every))
        labels = [p.labels if keep is None else p.labels[keep] for p, keep in zip(parents, keeps)]
        frozen = [p.frozen if keep is None else float(np.logaddexp(p.frozen, logsumexp(part[~keep])))
                  for p, part, keep in zip(parents, parts, keeps)]
        parts = [part if keep is None else part[keep] for part, keep in zip(parts, keeps)]
        logits, state = self.stepper.step(np.repeat(ids, [kept.size for kept in labels]), state)
        block = self.ring.keep(self.stepper.to_rows(state))
        texts = [p.text + self.vocab.chars[i] for p, i in zip(parents, ids.tolist())]
        dfas = self.automaton.advance(np.array([p.dfa for p in parents], dtype=np.int64), ids)
        self._add(texts, [k for k, _ in self.pending], labels, parts, frozen, dfas.tolist(), log_softmax(logits), block)
        self.expanded += len(self.pending)
        self.pending.clear()
        self.pending_rows = 0
        if self.progress is not None:
            self.progress(self.expanded)

    def rescore(self, node: int, rank: int) -> None:
        """Queue the complete sample of the node's child `rank` (its newline) again at its exact
        mixture probability, with the likeliest other inexact complete samples queued (up to
        RESCORE_BATCH: one pass of the network for all of them); a node's again only once."""
        if node in self.requeued:
            return  # (its exact entry is queued: this one was left behind)
        batch = [(node, rank)]
        while self.inexact and len(batch) < RESCORE_BATCH and -self.inexact[0][0] >= self.floor():
            _, k, r = heapq.heappop(self.inexact)
            if k != node and k not in self.requeued:
                batch.append((k, r))
        for (k, r), lp in zip(batch, self._label_logprobs([k for k, _ in batch])):
            exact = float(logsumexp(lp))
            self.requeued.add(k)
            if exact >= self.floor():  # (kept for naming its label when it is yielded; those below never are)
                self.rescored[k] = lp
            heapq.heappush(self.queue, (-exact, -1 - self.counter, k, r, True))
            self.counter += 1

    def label_logprobs(self, node: int) -> np.ndarray:
        """(labels,) log(w_l) + log P_l(x) for the complete sample x a node ends in, under every label."""
        lp = self.rescored.pop(node, None)
        return lp if lp is not None else self._label_logprobs([node])[0]

    def _label_logprobs(self, nodes: list[int]) -> list[np.ndarray]:
        """label_logprobs of each node's complete sample, in one batch: its kept labels' from its parts
        and states, the dropped ones' from their primed states (the root's), stepping every node's
        characters at once, the longest first so that the rows still stepping are the first ones."""
        newline = self.automaton.newline
        parents = [self.nodes[k] for k in nodes]
        ends = self.lsm(self.states(parents))[:, newline]  # (rows: each node's kept labels)
        lps, row = [], 0
        for p in parents:
            lp = np.empty(len(self.log_w))
            lp[p.labels], row = p.parts + ends[row: row + p.labels.size], row + p.labels.size
            lps.append(lp)
        dropped = [np.setdiff1d(np.arange(len(self.log_w)), p.labels) for p in parents]
        runs = sorted(((np.append(self.vocab.encode(p.text[len(self.prompt):]), newline), i)
                       for i, (p, d) in enumerate(zip(parents, dropped)) if d.size), key=lambda run: -run[0].size)
        if not runs:
            return lps
        sizes = [dropped[i].size for _, i in runs]
        state = self.stepper.from_rows(np.concatenate([self.root[dropped[i]] for _, i in runs]))
        first = np.repeat([ids[0] for ids, _ in runs], sizes)
        logp = log_softmax(self.stepper.head(state))[np.arange(first.size), first]  # (rows,) each run's so far

        def score(t: int, going: int, logits: np.ndarray) -> None:  # the character after the one stepped
            after = np.repeat([ids[t + 1] for ids, _ in runs[:going]], sizes[:going])
            logp[:after.size] += log_softmax(logits)[np.arange(after.size), after]

        self._step_runs([ids[:-1] for ids, _ in runs], sizes, state, score, ended_kept=False)
        for (_, i), part in zip(runs, np.split(logp, np.cumsum(sizes)[:-1])):
            lps[i][dropped[i]] = self.log_w[dropped[i]] + part
        return lps

    def _add(self, texts: list[str], parents: list[int], labels: list[np.ndarray], parts: list[np.ndarray],
             frozen: list[float], dfas: list[int], lsm: np.ndarray, block: int) -> None:
        """New nodes: texts, the nodes they extend, the labels each keeps and their log(w) + log-probability so far, the
        log of the mass of those dropped, automaton states, and the next-character
        log-probabilities (rows, V: a row per label a node keeps, the nodes in order), temperature
        1 (the model's own), whose states are the block's rows in that order. A node keeps only
        the children that may beat the floor (and none below it: no node)."""
        allowed = self.automaton.allowed(np.array(dfas, dtype=np.int64), np.array([len(t) for t in texts]))
        children, ends = self._children(labels, parts, lsm, allowed)
        self._see(texts, ends)
        floor = self.floor()
        row = 0
        for j, (text, parent, kept, lp, dfa) in enumerate(zip(texts, parents, labels, parts, dfas)):
            start, row = row, row + kept.size
            ids, mixed = children[j]
            if frozen[j] != -np.inf:
                mixed = np.logaddexp(mixed, frozen[j])  # a bound on every extension (the order unchanged)
            k = int(np.count_nonzero(mixed >= floor))  # (those below can never be needed)
            if k == 0:
                continue
            node = _Node(text, parent, dfa, block, start, kept, lp, frozen[j], ids[:k].copy(), mixed[:k].copy())
            self.nodes.append(node)
            self.node_bytes += (NODE_BYTES + len(text) + kept.nbytes + lp.nbytes + node.ids.nbytes
                                + node.child_logprobs.nbytes)
            self._push(-float(node.child_logprobs[0]), len(self.nodes) - 1, 0, exact=frozen[j] == -np.inf)

    def _children(self, labels: list[np.ndarray], parts: list[np.ndarray], lsm: np.ndarray,
                  allowed: np.ndarray) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """Each new node's allowed next ids, likeliest first, with their mixture log-probabilities
        under the labels it keeps (views of the batch's arrays where a node has one row); and
        (nodes,) the log-probability of the complete sample each one ends in (-inf where its
        newline is not allowed), under the same labels."""
        newline = self.automaton.newline
        if lsm.shape[0] == len(labels):  # a row per node (one label each): every node's children sorted at once
            lp = np.array([part[0] for part in parts])
            scores = np.where(allowed, lsm + lp[:, None], -np.inf)  # (B, V)
            order = np.argsort(-scores, axis=1, kind="stable")  # the allowed ones first, likeliest first
            scores = np.take_along_axis(scores, order, axis=1)
            order = order.astype(self.vocab.dtype)
            counts = allowed.sum(axis=1).tolist()
            ends = np.where(allowed[:, newline], lsm[:, newline] + lp, -np.inf)
            return [(order[j, :c], scores[j, :c]) for j, c in enumerate(counts)], ends
        children, ends, row = [], np.full(len(labels), -np.inf), 0
        for j, (kept, lp) in enumerate(zip(labels, parts)):
            start, row = row, row + kept.size
            ids = np.flatnonzero(allowed[j])
            mixed = logsumexp(lp[:, None] + lsm[start:row, ids]) if ids.size else ids  # (k,)
            by_rank = np.argsort(-mixed, kind="stable")
            children.append((ids[by_rank].astype(self.vocab.dtype), mixed[by_rank]))
            if allowed[j, newline]:
                ends[j] = mixed[np.searchsorted(ids, newline)]
        return children, ends

    def floor(self) -> float:
        """A log-probability the n-th sample the search yields reaches at least: that of the n-th
        likeliest complete sample seen so far (-inf until n are seen)."""
        return self.seen[0] if len(self.seen) == self.n else -np.inf

    def _see(self, texts: list[str], ends: np.ndarray) -> None:
        """Count the complete samples new nodes end in (`ends`: their log-probabilities under the
        labels each keeps, no more than their own) among the n likeliest seen."""
        for j in np.flatnonzero(ends > self.floor()).tolist():
            if (len(self.seen) < self.n or ends[j] > self.seen[0]) and not self.skip(texts[j]):
                (heapq.heappush if len(self.seen) < self.n else heapq.heapreplace)(self.seen, float(ends[j]))

    def _push(self, neg_lp: float, node: int, rank: int, exact: bool) -> None:
        heapq.heappush(self.queue, (neg_lp, self.counter, node, rank, exact))
        self.counter += 1
        if not exact and self.nodes[node].ids[rank] == self.automaton.newline:
            heapq.heappush(self.inexact, (neg_lp, node, rank))
