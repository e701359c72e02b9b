"""The network's outputs for the prefixes samples share, computed once: the top of the tree of
everything drawn.

Names drawn from a model share their first characters far more than they differ: 20,000 names
of the bundled model start with 33 distinct letters, 256 distinct pairs, 1,483 triples, and hold
22,401 distinct prefixes among their 120,816 characters. A row's next distribution and
state are a function of its prefix alone (from its primed start), so the row engine looks each
row's new prefix up here before stepping the network, and steps only the prefixes it has not
seen: once each, however many rows drew them at once. What a row draws is unchanged (the same
logits and state as its own step would give, up to the last bits a matrix product's row takes
from the rows beside it, as at another batch width).

    node:  a prefix (from one primed start state)   child[node, c] - 1: the node of prefix + c, or -1
           logits[node]: its next character's (V,)   states[node]: its state, one row (S,)

A root is a primed start state, found by its bytes, so jobs of the same prompt (and label)
share one. Memory: at most `memory` bytes of nodes; a full cache takes no new nodes (what it
holds, the first prefixes drawn, are the ones drawn most), and is emptied when a job starts from
a root it does not hold (a server's new prompt), so it follows what is being drawn. A row whose
new prefix the cache does not keep holds its logits and state in a node of its own (numbered
from the cap up) for one step: every row is a node, so the engine keeps no state of its own.
Nor are prefixes of more than PREFIX_DEPTH characters kept: a long sample (prose) shares nothing
past its first characters, and a step whose rows all have nodes of their own looks nothing up.
When every row draws under one plain setting, a node also keeps its draw (cumulative
probabilities and log-normaliser at that setting: RowEngine._node_draws), dropped when the
setting changes.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

PREFIX_MEMORY = 32 << 20  # bytes of nodes an engine keeps (14,021 nodes of the bundled names model)
# Prefixes longer than this are not kept: past the first characters, samples rarely share them
# (prose never does), and a row that has no prefix to share skips the lookups altogether.
PREFIX_DEPTH = 16


def node_bytes(vocab_size: int, state_size: int) -> int:
    """A node's memory: its children (int32), logits and state (float32); the draw's cumulative
    probabilities and log-normaliser (float64), and whether they are there."""
    return 4 * (2 * vocab_size + state_size) + 8 * (vocab_size + 1) + 1


class PrefixCache:
    """Each prefix's next logits and state, found by (parent node, character); and the rows'
    own: nodes cap + i hold the rows whose prefix the cache does not keep (it is full), for one
    step."""

    def __init__(self, stepper, vocab_size: int, state_size: int, memory: int = PREFIX_MEMORY):
        self.stepper, self.vocab_size, self.state_size = stepper, vocab_size, state_size
        self.cap = memory // node_bytes(vocab_size, state_size)
        self.clear()
        self.own_logits = np.zeros((0, vocab_size), dtype=np.float32)
        self._own_states: Optional[np.ndarray] = np.zeros((0, state_size), dtype=np.float32)
        self.own_native = None  # the rows' own states as the stepper holds them, when they came from it whole

    def clear(self) -> None:
        # At the cap from the start: memory the kernel maps only as nodes are written to it.
        self.child = np.zeros((self.cap, self.vocab_size), dtype=np.int32)  # node + 1; 0: not here
        self.logits = np.empty((self.cap, self.vocab_size), dtype=np.float32)
        self.states = np.empty((self.cap, self.state_size), dtype=np.float32)
        self.count = 0
        self.roots: dict[bytes, int] = {}
        self.cdf = np.empty((self.cap, self.vocab_size), dtype=np.float64)
        self.lse = np.empty(self.cap, dtype=np.float64)
        self.drawn = np.zeros(self.cap, dtype=bool)  # cdf and lse are there, for the settings `draw_key`
        self.draw_key: Optional[tuple] = None

    @property
    def full(self) -> bool:
        return self.count >= self.cap

    @property
    def own_states(self) -> np.ndarray:
        """The rows' own states as rows (S,), made from the stepper's state when first needed."""
        if self._own_states is None:
            self._own_states = self.stepper.to_rows(self.own_native)
        return self._own_states

    def logits_of(self, nodes: np.ndarray) -> np.ndarray:
        return self._gather(nodes, self.logits, self.own_logits)

    def states_of(self, nodes: np.ndarray) -> np.ndarray:
        return self._gather(nodes, self.states, self.own_states)

    def logit_of(self, nodes: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Each node's logit of its id."""
        mine = nodes >= self.cap
        out = np.empty(len(nodes), dtype=np.float32)
        out[~mine] = self.logits[nodes[~mine], ids[~mine]]
        out[mine] = self.own_logits[nodes[mine] - self.cap, ids[mine]]
        return out

    def own_native_of(self, nodes: np.ndarray):
        """The stepper's state for rows all on nodes of their own (`nodes` >= cap)."""
        at = nodes - self.cap
        if self.own_native is None:
            return self.stepper.from_rows(self.own_states[at])
        whole = len(at) == len(self.own_logits) and bool((at == np.arange(len(at))).all())
        return self.own_native if whole else self.stepper.select(self.own_native, at)

    def keep_own(self, logits: np.ndarray, native) -> np.ndarray:
        """A step of rows all on nodes of their own: their new nodes, one each, in row order."""
        self.own_logits, self.own_native, self._own_states = logits, native, None
        return self.cap + np.arange(len(logits))

    def _gather(self, nodes: np.ndarray, kept: np.ndarray, own: np.ndarray) -> np.ndarray:
        if not len(own):
            return kept[nodes]
        mine = nodes >= self.cap
        if mine.all():
            return own[nodes - self.cap]
        out = np.empty((len(nodes), kept.shape[1]), dtype=kept.dtype)
        out[~mine], out[mine] = kept[nodes[~mine]], own[nodes[mine] - self.cap]
        return out

    def start(self, state: np.ndarray, logits: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The nodes of primed start states, (P, S) and their logits (P, V), and the new nodes of
        the `live` rows: a start not here at a full cache (a server's new prompt) empties it, so
        that it follows what is drawn now, the live rows' prefixes moving to rows' own nodes."""
        keys = [row.tobytes() for row in state]
        if not all(key in self.roots for key in keys) and self.count + len(state) > self.cap:
            logits_live, states_live = self.logits_of(live), self.states_of(live)
            self.clear()
            self.own_logits, self._own_states, self.own_native = logits_live, states_live, None
            live = self.cap + np.arange(len(live))
        nodes = np.empty(len(state), dtype=np.int64)
        for i, key in enumerate(keys):
            if key not in self.roots and not self.full:
                self.roots[key] = int(self._add(logits[i : i + 1], state[i : i + 1])[0])
            nodes[i] = self.roots.get(key, -1)
        return nodes, live

    def own(self, logits: np.ndarray, states: np.ndarray) -> np.ndarray:
        """Nodes for rows the cache does not keep, beside the rows' own there already."""
        at = len(self.own_logits)
        self.own_logits = np.concatenate([self.own_logits, logits])
        self._own_states, self.own_native = np.concatenate([self.own_states, states]), None
        return self.cap + np.arange(at, at + len(logits))

    def find(self, nodes: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The nodes of prefix `nodes` + character `ids`, -1 where not here (and under a row's own node)."""
        kept = nodes < self.cap
        found = np.full(len(nodes), -1, dtype=np.int64)
        found[kept] = self.child[nodes[kept], ids[kept]].astype(np.int64) - 1
        return found

    def advance(self, parents: np.ndarray, ids: np.ndarray, logits: np.ndarray, states: np.ndarray) -> np.ndarray:
        """The nodes of new prefixes, each (parent, character) pair once and not here yet: kept while
        there is room and the parent is kept, else the rows' own for the next step (the rows' own
        before are no longer anyone's)."""
        nodes = np.full(len(parents), -1, dtype=np.int64)
        kept = np.flatnonzero(parents < self.cap)[: max(0, self.cap - self.count)]
        if kept.size:
            nodes[kept] = self._add(logits[kept], states[kept])
            self.child[parents[kept], ids[kept]] = nodes[kept] + 1
        own = np.flatnonzero(nodes < 0)
        self.own_logits, self._own_states, self.own_native = logits[own], states[own], None
        nodes[own] = self.cap + np.arange(len(own))
        return nodes

    def _add(self, logits: np.ndarray, states: np.ndarray) -> np.ndarray:
        k, at = len(logits), self.count
        self.logits[at : at + k], self.states[at : at + k] = logits, states
        self.drawn[at : at + k] = False
        self.count += k
        return np.arange(at, at + k)


def distinct(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, inverse): the position of each distinct key's first occurrence, and for every key
    which of them it is (np.unique's, without the 10 ms its import of numpy.ma adds to start-up)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.ones(len(keys), dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return order[starts], inverse
