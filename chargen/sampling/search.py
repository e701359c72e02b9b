"""The most likely line samples, best first: exact best-first (uniform-cost) search.

Every character multiplies a sample's probability by at most 1, so a prefix is never less likely
than any sample that extends it. The search keeps a priority queue of prefixes ordered by their
log-probability; the first complete sample (a prefix followed by the newline) to reach the front
is more likely than anything still queued or any extension of it: the exact best, then the next.
No beam, so nothing is pruned on a guess; the only bound is the number of prefixes expanded
(`max_expansions`), and samples printed before it is reached are exact.

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
    logprob: float
    dfa: int
    block: int  # the node's recurrent state is row `row` of states[block]
    row: int
    ids: np.ndarray  # allowed next ids, likeliest first
    child_logprobs: np.ndarray  # logprob + log p(id), same order


def most_likely(stepper: Stepper, vocab: Vocab, prompt: str, n: int, automaton: Automaton, *,
                start_state: Optional[list[np.ndarray]] = None, skip: Callable[[str], bool] = lambda text: False,
                max_expansions: int = MAX_EXPANSIONS, batch: int = SEARCH_BATCH) -> Iterator[Sample]:
    """Yield the n most probable complete line samples starting with `prompt`, best first.

    `automaton` (already bounded to a maximum length) says which samples count; `skip` drops
    complete samples (--novel, --exclude) without ending the search.
    """
    search = _Search(stepper, vocab, automaton, prompt, start_state, batch)
    found = 0
    while found < n:
        entry = search.pop()
        if entry is None:
            return  # the language holds fewer samples than asked
        neg_lp, node, next_id = entry
        if next_id != automaton.newline:
            if len(search.nodes) + len(search.pending) >= max_expansions:
                raise SamplingError(f"the search for the {n} likeliest samples stopped after {max_expansions:,} "
                                    f"expansions with {found} found (those are exact); ask for fewer or constrain more")
            search.defer(node, next_id, -neg_lp)
        elif not skip(search.nodes[node].text):
            found += 1
            text = search.nodes[node].text
            yield Sample(text=text, prompt=prompt, logprob=-neg_lp, n_chars=len(text) - len(prompt) + 1)


class _Search:
    """The queue of prefixes, their recurrent states (in batched blocks) and the pending expansions."""

    def __init__(self, stepper: Stepper, vocab: Vocab, automaton: Automaton, prompt: str,
                 start_state: Optional[list[np.ndarray]], batch: int = SEARCH_BATCH):
        self.stepper, self.vocab, self.automaton, self.batch = stepper, vocab, automaton, batch
        start = automaton.start(prompt, vocab)
        logits, state = prime(stepper, vocab, prompt, True, start_state)
        self.blocks = [state]  # batched recurrent states; nodes point into them
        self.nodes: list[_Node] = []
        self.queue: list[tuple[float, int, int, int]] = []  # (-logprob, tie-break, node, rank of its child)
        self.pending: list[tuple[int, int, float]] = []  # (parent node, next id, logprob) awaiting a step
        self.counter = 0
        self._add([prompt], [0.0], [start], logits[None], 0)

    def pop(self) -> Optional[tuple[float, int, int]]:
        """The likeliest queued (-logprob, node, next id) that nothing pending can beat; None when exhausted."""
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
            return neg_lp, k, next_id

    def defer(self, node: int, next_id: int, logprob: float) -> None:
        self.pending.append((node, next_id, logprob))
        if len(self.pending) >= self.batch:
            self.expand()

    def expand(self) -> None:
        """One network step for every pending prefix; their children join the queue."""
        parents = [self.nodes[k] for k, _, _ in self.pending]
        rows = [self.stepper.select(self.blocks[p.block], np.array([p.row])) for p in parents]
        state = rows[0] if len(rows) == 1 else self.stepper.concat(rows)
        ids = np.array([i for _, i, _ in self.pending], dtype=np.int64)
        logits, state = self.stepper.step(ids, state)  # (B, V)
        self.blocks.append(state)
        texts = [p.text + self.vocab.chars[i] for p, i in zip(parents, ids.tolist())]
        dfas = self.automaton.advance(np.array([p.dfa for p in parents], dtype=np.int64), ids)
        self._add(texts, [lp for _, _, lp in self.pending], dfas.tolist(), logits, len(self.blocks) - 1)
        self.pending.clear()

    def _add(self, texts: list[str], logps: list[float], dfas: list[int], logits: np.ndarray, block: int) -> None:
        allowed = self.automaton.allowed(np.array(dfas, dtype=np.int64), np.array([len(t) for t in texts]))
        lsm = log_softmax(logits)  # (B, V), temperature 1: the model's own probabilities
        for row, (text, lp, dfa) in enumerate(zip(texts, logps, dfas)):
            ids = np.flatnonzero(allowed[row])
            if ids.size == 0:
                continue
            ids = ids[np.argsort(-lsm[row, ids], kind="stable")]
            self.nodes.append(_Node(text, lp, dfa, block, row, ids, lp + lsm[row, ids]))
            self._push(-float(self.nodes[-1].child_logprobs[0]), len(self.nodes) - 1, 0)

    def _push(self, neg_lp: float, node: int, rank: int) -> None:
        heapq.heappush(self.queue, (neg_lp, self.counter, node, rank))
        self.counter += 1
