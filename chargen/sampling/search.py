"""The most likely line samples, best first: exact best-first (uniform-cost) search.

Every character multiplies a sample's probability by at most 1, so a prefix is never less likely
than any sample that extends it. The search keeps a priority queue of prefixes ordered by their
log-probability; the first complete sample (a prefix followed by the newline) to reach the front
is more likely than anything still queued or any extension of it: the exact best, then the next.
No beam, so nothing is pruned on a guess; the only bound is the number of prefixes expanded
(`max_expansions`), and samples printed before it is reached are exact.

Under a blend of labels (a mixture: P(x) = sum over labels l of w_l P_l(x)) the same holds: a
prefix's mixture probability sum_l w_l P_l(prefix) bounds every sample that extends it. A node then
carries one recurrent state and one log-probability per label, and is ranked by their mixture.

Two things keep it cheap. A prefix's children are queued lazily: its characters are sorted once,
and only its best unvisited child sits in the queue (popping child r queues child r + 1). And
prefixes are expanded in batches: up to `batch` of the front's incomplete prefixes go through
the network in one step, which is safe because a complete sample is only printed once nothing
pending could beat it.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

from ..errors import SamplingError
from ..tokenizer import Vocab
from .constraints import Automaton
from .drawing import Sample, prime
from .engine import Stepper, log_softmax

MAX_EXPANSIONS = 50_000  # prefixes run through the network at most (memory: one state each)
SEARCH_BATCH = 64  # prefixes expanded together in one network step


@dataclass
class _Node:
    text: str  # the sample so far, prompt included
    dfa: int
    block: int  # the node's recurrent states are rows row .. row + P - 1 of states[block]
    row: int
    ids: np.ndarray  # allowed next ids, likeliest first
    child_logprobs: np.ndarray  # (k,) the mixture log-probability of each child, same order
    child_parts: np.ndarray  # (P, k) log(w_l) + log P_l(child) for each label l


def logsumexp(a: np.ndarray) -> np.ndarray:
    """log(sum(exp(a), axis=0)); exactly a[0] for one row."""
    if a.shape[0] == 1:
        return a[0]
    m = a.max(axis=0)
    return m + np.log(np.exp(a - m).sum(axis=0))


def most_likely(stepper: Stepper, vocab: Vocab, prompt: str, n: int, automaton: Automaton, *,
                starts: Optional[list[Optional[list[np.ndarray]]]] = None, weights: Optional[np.ndarray] = None,
                skip: Callable[[str], bool] = lambda text: False,
                max_expansions: int = MAX_EXPANSIONS, batch: int = SEARCH_BATCH) -> Iterator[Sample]:
    """Yield the n most probable complete line samples starting with `prompt`, best first.

    `automaton` (already bounded to a maximum length) says which samples count; `skip` drops
    complete samples (--novel, --exclude) without ending the search. `starts` holds the start
    state lines begin from (default: one, zeros); a blend of labels gives each label's and its
    weight (`weights`, summing to 1): the samples are then ranked by their mixture probability,
    and each node holds P states, so at most max_expansions / P prefixes are expanded (the same
    memory).
    """
    if starts is None:
        starts = [None]
    if weights is None:
        weights = np.ones(1)
    search = _Search(stepper, vocab, automaton, prompt, starts, np.log(np.asarray(weights, dtype=np.float64)), batch)
    limit = max(1, max_expansions // len(starts))
    found = 0
    while found < n:
        entry = search.pop()
        if entry is None:
            return  # the language holds fewer samples than asked
        neg_lp, node, rank = entry
        next_id = int(search.nodes[node].ids[rank])
        if next_id != automaton.newline:
            if len(search.nodes) + len(search.pending) >= limit:
                raise SamplingError(f"the search for the {n:,} likeliest samples stopped after {limit:,} "
                                    f"expansions with {found:,} found (those are exact); ask for fewer or constrain more")
            search.defer(node, rank)
        elif not skip(search.nodes[node].text):
            found += 1
            text = search.nodes[node].text
            yield Sample(text=text, prompt=prompt, logprob=-neg_lp, n_chars=len(text) - len(prompt) + 1)


class _Search:
    """The queue of prefixes, their recurrent states (in batched blocks, P rows a node) and the
    pending expansions."""

    def __init__(self, stepper: Stepper, vocab: Vocab, automaton: Automaton, prompt: str,
                 starts: list[Optional[list[np.ndarray]]], log_w: np.ndarray, batch: int = SEARCH_BATCH):
        self.stepper, self.vocab, self.automaton, self.batch = stepper, vocab, automaton, batch
        self.P = len(starts)
        start = automaton.start(prompt, vocab)
        primed = [prime(stepper, vocab, prompt, True, s) for s in starts]
        state = primed[0][1] if self.P == 1 else stepper.concat([st for _, st in primed])
        self.blocks = [state]  # batched recurrent states; nodes point into them
        self.nodes: list[_Node] = []
        self.queue: list[tuple[float, int, int, int]] = []  # (-logprob, tie-break, node, rank of its child)
        self.pending: list[tuple[int, int]] = []  # (parent node, rank of the child) awaiting a step
        self.counter = 0
        self._add([prompt], [log_w], [start], np.stack([lg for lg, _ in primed])[None], 0)

    def pop(self) -> Optional[tuple[float, int, int]]:
        """The likeliest queued (-logprob, node, rank of its child) that nothing pending can beat;
        None when exhausted."""
        while True:
            if not self.queue:
                if not self.pending:
                    return None
                self.expand()
                continue
            neg_lp, tie, k, rank = self.queue[0]
            next_id = int(self.nodes[k].ids[rank])
            if next_id == self.automaton.newline and self.pending:
                self.expand()  # a pending prefix's children might beat this complete sample
                continue
            heapq.heappop(self.queue)
            node = self.nodes[k]
            if rank + 1 < node.ids.size:
                self._push(-float(node.child_logprobs[rank + 1]), k, rank + 1)
            return neg_lp, k, rank

    def defer(self, node: int, rank: int) -> None:
        self.pending.append((node, rank))
        if len(self.pending) >= self.batch:
            self.expand()

    def expand(self) -> None:
        """One network step for every pending prefix (P rows each); their children join the queue."""
        P = self.P
        parents = [self.nodes[k] for k, _ in self.pending]
        rows = [self.stepper.select(self.blocks[p.block], np.arange(p.row, p.row + P)) for p in parents]
        state = rows[0] if len(rows) == 1 else self.stepper.concat(rows)
        ids = np.array([p.ids[r] for p, (_, r) in zip(parents, self.pending)], dtype=np.int64)
        logits, state = self.stepper.step(np.repeat(ids, P), state)  # (B * P, V)
        self.blocks.append(state)
        texts = [p.text + self.vocab.chars[i] for p, i in zip(parents, ids.tolist())]
        dfas = self.automaton.advance(np.array([p.dfa for p in parents], dtype=np.int64), ids)
        parts = [p.child_parts[:, r] for p, (_, r) in zip(parents, self.pending)]
        self._add(texts, parts, dfas.tolist(), logits.reshape(len(parents), P, -1), len(self.blocks) - 1)
        self.pending.clear()

    def _add(self, texts: list[str], parts: list[np.ndarray], dfas: list[int], logits: np.ndarray, block: int) -> None:
        """New nodes: texts, each label's log(w) + log-probability so far (P,), automaton states, and
        their next-character logits (B, P, V), temperature 1 (the model's own probabilities)."""
        allowed = self.automaton.allowed(np.array(dfas, dtype=np.int64), np.array([len(t) for t in texts]))
        lsm = log_softmax(logits.reshape(-1, logits.shape[-1])).reshape(logits.shape)  # (B, P, V)
        for row, (text, lp, dfa) in enumerate(zip(texts, parts, dfas)):
            ids = np.flatnonzero(allowed[row])
            if ids.size == 0:
                continue
            child_parts = lp[:, None] + lsm[row][:, ids]  # (P, k)
            mixed = logsumexp(child_parts)
            order = np.argsort(-mixed, kind="stable")
            self.nodes.append(_Node(text, dfa, block, row * self.P, ids[order], mixed[order], child_parts[:, order]))
            self._push(-float(self.nodes[-1].child_logprobs[0]), len(self.nodes) - 1, 0)

    def _push(self, neg_lp: float, node: int, rank: int) -> None:
        heapq.heappush(self.queue, (neg_lp, self.counter, node, rank))
        self.counter += 1
