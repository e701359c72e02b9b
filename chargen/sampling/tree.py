"""Exact constrained sampling that learns where the accepted samples are: a tree of the prefixes
drawn, each with an upper bound on the probability that the model completes it into a sample
the constraints accept.

Every prefix s drawn is a node holding its network state and its next-character distribution
p(.|s) (at the sampling settings: temperature, top-k, top-p), and each of its child slots holds
an upper bound psi(sc) on the probability that the model completes sc into an accepted sample:
1 where the automaton can still accept within the length bounds, 0 where it cannot (the
newline's slot is exact: 1 in an accepting state of allowed length, else 0), tighter once draws
went there. A draw at node s, with N(s) = sum_c p(c|s) psi(sc):

    go on with probability N(s) / psi(s), else the draw is rejected;
    pick c with probability p(c|s) psi(sc) / N(s).

The probability of drawing a sample x and accepting it telescopes along its path,

    prod_s [N(s) / psi(s)] [p(c|s) psi(sc) / N(s)] = p(x) psi(x) / psi(root) = p(x) 1[x accepted] / psi(root),

so **an accepted draw follows the model's distribution conditioned on the constraints exactly,
from the first draw**, whatever the bounds are, as long as each is an upper bound and
N(s) <= psi(s). After the draws, psi(s) := N(s) on every node they visited, deepest first: still
an upper bound (its children's are) and never above the old one, so both conditions hold, and the
acceptance rate Z / psi(root) (Z: the probability the model gives the constraints) rises towards
1 as the bounds tighten where the mass is. A rejected draw is not wasted: it tightens the bounds
on its path. Draws that share a prefix share its network steps (each node is computed once).
With psi = 1 everywhere, the draw is plain rejection at the first character that rules the
sample out: the tree only ever does better. `tests/test_constraints.py` holds it to the
conditional distribution by enumeration, with a chi-square test that fails when the "go on"
step is skipped (`accept_step=False`, for that test only).

Rounds: attempts run in rounds of up to a batch's width, all descending with the bounds as they
were at the round's start (one network step per depth for the new nodes they reach), and the
bounds are updated when the round ends; a round has up to MAX_BATCH attempts, fewer for a model
whose nodes are large (round_width). Each attempt is exact given its round's bounds; which
samples come depends on the rounds, so the same seed gives the same samples at the same width
(the command's and the server's default, MAX_BATCH), not at any width as plain sampling does.

Memory: the nodes kept between rounds take at most `memory` bytes (TREE_MEMORY, 64 MB: 23,448
nodes of the bundled names model), plus one round's new nodes. When a round ends above 80% of
the cap, the least recently used leaves that never had a child are evicted (ties broken by a
hash of the prefix): their bound stays in their parent's slot and is exactly what a fresh node
computes again, so only the cached state is lost. A round that starts with the tree at its cap
(no such leaf left) makes nodes that live for that round only and pass no bound up: below them
a draw is plain rejection, still exact. These rules depend only on the draws, not on the order
nodes are made in, so an exported page's sampler (static/websampler.js) keeps the same tree.
A blend's labels are the roots of one tree (LabelTree), so their prefixes compete for the same
nodes: the labels drawn most keep the most.

Samples kept out after the constraints (a training line under `novel`, a repeat under `unique`,
a line of `exclude`): a drawing tells its tree which accepted samples no later draw may return
(Excluded), and the bound in such a sample's newline slot becomes 0, its probability added to
`gone`. Its node is then pinned, never evicted (a fresh node would allow the sample again,
under bounds computed without it). The bounds stay upper bounds on the probability of what may
still be kept, so the draws stay exact for the rest, and the tree stops spending draws on what it
knows will be rejected: `-n 5000 --max-len 8 --ends-with a --unique --novel` takes 20,242 draws against
30,352; 5,000 distinct names of at most three characters from a model adapted to five names
took 2.2 million draws under `--unique`, 17,000 told (docs/benchmarks.md). When every sample the
constraints allow is kept out, the root's bound reaches 0 and the drawing says so at once.
Z, the probability of the constraints, is still what the draws estimate: a draw is accepted with
probability (Z - gone) / psi(root), so each adds psi(root) 1[accepted] + gone, and psi(root) + gone
bounds Z.

Warm trees: calls that give no seed (a server's requests, a program's repeated `sample` calls)
keep their trees between calls (WarmTrees), so a later call with the same prompt, labels,
constraints and settings starts where the earlier ones left the bounds and the nodes. Since each
draw is exact whatever the bounds are, its samples still follow the conditional distribution,
independently of what came before (its random numbers come from its own key); only which samples
it gets depends on the history, which a call without a seed never fixed. A call with a seed gets
a fresh tree: the same seed, the same samples. What a call rules out for itself (its repeats, its
`exclude`: FOR_CALL) it gives back before the tree serves another (end_call: each such sample's
slot is 1 again and the bounds on its path rise by what that adds); the training lines under
`novel` (FOR_GOOD, `novel` being part of a warm tree's key) stay ruled out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Optional

import numpy as np

from ..config import SampleConfig
from ..tokenizer import Vocab
from .constraints import Guide
from .engine import Results, Stepper, log_softmax, sampling_probs, texts_of
from .labels import LABEL_GO, LABEL_PICK
from .prefixes import distinct
from .randomness import mix, uniforms

# Attempts a round of the adaptive exact sampler runs at most (its samples depend on it; a page's
# too): a wider round steps more new nodes a network step and makes fewer numpy calls a draw, and
# learns its bounds a little later; measured (benchmarks/round_width.py), 5,000 names under issue
# 28's three constraints in-process on Zen 4: 4,096 drew 1.08-1.23x as fast as 1,024 (2,048
# 1.09-1.21x, 8,192 0.96-1.10x), for 4-11% more draws and 32 MB more at the peak (docs/benchmarks.md).
MAX_BATCH = 4096
# A round's new nodes live at least until it ends (up to ~8 an attempt), so a model whose nodes are
# large (a wide vocabulary: the base model's 351 characters, 11.6 KB a node against the names
# model's 2.9 KB) runs narrower rounds: attempts x node bytes within ROUND_BYTES (round_width).
# Measured on the base model, 1,000-2,000 names under five constraint sets and blends, in-process
# on Zen 4: 2,048 took 0.67-1.15x the time of 4,096 (0.94 the median) at 54-90% of its peak memory;
# 1,024 was slower still (docs/benchmarks.md).
ROUND_BYTES = 24 << 20
MIN_ROUND = 256
TREE_MEMORY = 64 << 20  # bytes of nodes kept between rounds
WARM_MEMORY = 2 * TREE_MEMORY  # bytes of nodes WarmTrees keeps between calls (the least recently used go first)
# Accepted samples a tree's later draws must not return: (root, text after the prompt) -> KEPT (0,
# not ruled out), FOR_GOOD (for as long as the tree lives: a training line under `novel`, which
# holds for every call with the tree's key) or FOR_CALL (for the call drawing now: its repeats
# under `unique`, its `exclude`; given back by end_call before the tree serves another call).
Excluded = Callable[[int, str], int]
KEPT, FOR_GOOD, FOR_CALL = 0, 1, 2
FOUND_KEPT = 1 << 17  # distinct accepted samples a tree remembers for Z's lower bound (a warm tree lives long)


def prefix_key(parent: np.ndarray, chars: np.ndarray) -> np.ndarray:
    """A 64-bit name for a prefix, from its parent's and its last character's: eviction breaks ties
    by it, so which nodes are kept does not depend on the order nodes were made in (an exported
    page makes them one draw at a time, this module a depth at a time)."""
    with np.errstate(over="ignore"):
        return mix(parent * np.uint64(0x9E3779B97F4A7C15) + chars.astype(np.uint64) + np.uint64(1))


def node_bytes(vocab_size: int, state_size: int) -> int:
    """The memory one node takes (an exported page counts its nodes by it too)."""
    return _Nodes(vocab_size, state_size, 1).bytes_per_node


def round_width(bytes_per_node: int) -> int:
    """Attempts a round runs for a tree whose nodes take `bytes_per_node`: MAX_BATCH, halved while
    the round's attempts times a node's bytes pass ROUND_BYTES, to MIN_ROUND at least (an exported
    page reads its model's: max_batch)."""
    width = MAX_BATCH
    while width > MIN_ROUND and width * bytes_per_node > ROUND_BYTES:
        width //= 2
    return width


def node_cap(vocab_size: int, state_size: int, memory: int = TREE_MEMORY) -> int:
    """How many nodes a tree keeps between rounds within `memory` bytes (an exported page keeps as
    many: websampler.js's nodeCap)."""
    return max(16, memory // node_bytes(vocab_size, state_size))


@dataclass
class ConstraintMass:
    """What the draws so far say about Z, the probability the model (at the sampling settings)
    gives the constraints: an estimate (an unbiased mean, moved into the bounds) and certain bounds."""

    estimate: float  # mean over draws of 1[accepted] * psi(root) at the draw's round (E = Z), within the bounds
    lower: float  # the probability of the distinct accepted samples found
    upper: float  # psi(root) now

    @classmethod
    def of(cls, mass_sum: float, draws: int, lower: float, upper: float) -> "ConstraintMass":
        """The unbiased mean, moved into the certain bounds where chance put it outside (two
        accepted draws in a hundred may say 1e-7 of a constraint found to hold 1.9e-8): never
        further from Z than the mean itself."""
        mean = mass_sum / draws if draws else upper
        return cls(min(max(mean, lower), upper), lower, upper)

    def record(self) -> dict:
        return {"p_constraints": float(f"{self.estimate:.4g}"), "p_constraints_lower": float(f"{self.lower:.4g}"),
                "p_constraints_upper": float(f"{self.upper:.4g}")}


class _Nodes:
    """The tree's nodes as columns, one row per node; free rows are reused."""

    def __init__(self, vocab_size: int, state_size: int, capacity: int):
        v = vocab_size
        self.columns = {"probs": ((v,), np.float64), "psi": ((v,), np.float64), "child": ((v,), np.int32),  # node + 1
                        "lsm": ((v,), np.float32), "kept": ((), np.float64), "state": ((state_size,), np.float32),
                        "dfa": ((), np.int64), "depth": ((), np.int64), "parent": ((), np.int64),
                        "char": ((), np.int64), "used": ((), np.int64), "key": ((), np.uint64), "pristine": ((), bool),
                        "pinned": ((), bool),
                        "temp": ((), bool), "children": ((), np.int32)}
        for name, (shape, dtype) in self.columns.items():  # zeroed pages cost nothing until used
            setattr(self, name, np.zeros((capacity,) + shape, dtype=dtype))
        self.top = 0  # rows ever used
        self.free: list[int] = []
        # (asked for by every call's round width and a warm tree's memory: summed once)
        self.bytes_per_node = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                                  for shape, dtype in self.columns.values())

    def alloc(self, k: int) -> np.ndarray:
        reused = [self.free.pop() for _ in range(min(k, len(self.free)))]
        fresh = np.arange(self.top, self.top + k - len(reused))
        self.top += len(fresh)
        if self.top > len(self.dfa):
            self._grow(max(self.top, 2 * len(self.dfa)))
        rows = np.concatenate([np.asarray(reused, dtype=np.int64), fresh])
        self.child[rows] = 0
        self.children[rows] = 0
        return rows

    def release(self, rows: np.ndarray) -> None:
        self.free.extend(rows.tolist())

    @property
    def count(self) -> int:
        return self.top - len(self.free)

    def _grow(self, capacity: int) -> None:
        for name in self.columns:
            old = getattr(self, name)
            new = np.zeros((capacity,) + old.shape[1:], dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)


def in_order_sums(w: np.ndarray) -> np.ndarray:
    """Each row's cumulative sums, added left to right as an exported page adds them (numpy's `sum`
    adds pairwise: its last bits can differ, and a total decides whether a draw goes on)."""
    return np.cumsum(w, axis=-1)


def pick_weighted(w: np.ndarray, u: np.ndarray, cdf: Optional[np.ndarray] = None) -> np.ndarray:
    """Row r picks index i with probability w[r, i] / sum(w[r]) (u: U[0, 1) per row), never one of
    weight 0: the first index whose cumulative weight passes u * total, and the last of positive
    weight when rounding takes u * total up to the total. `cdf`: w's in_order_sums, if known."""
    cdf = in_order_sums(w) if cdf is None else cdf
    return pick_from_sums(cdf, last_positive(w), u)


def last_positive(w: np.ndarray) -> np.ndarray:
    """Each row's last index of positive weight."""
    return w.shape[1] - 1 - np.argmax(w[:, ::-1] > 0, axis=-1)


def pick_from_sums(cdf: np.ndarray, last: np.ndarray, u: np.ndarray) -> np.ndarray:
    """pick_weighted, given the rows' in_order_sums and last_positive."""
    c = (cdf <= (u * cdf[:, -1])[:, None]).sum(axis=-1)
    return np.minimum(c, last)


class PrefixTree:
    """One prompt's exact constrained draws (temperature > 0), learning where the accepted mass is.

        tree = PrefixTree(stepper, vocab, guide, cfg, key, prompt_logits, prompt_state)
        results = tree.run(np.arange(0, 512))  # attempts 0..511, one round

    A blend's tree has a root per label (`prompt_logits` (K, V), `prompt_state` of K rows: rows
    0..K-1 of its nodes, root k's prefixes named from k): LabelTree picks each attempt's root, and
    the labels' draws share the tree's memory, its rounds and their network steps.
    """

    def __init__(self, stepper: Stepper, vocab: Vocab, guide: Guide, cfg: SampleConfig, key: np.uint64,
                 prompt_logits: np.ndarray, prompt_state, *, memory: int = TREE_MEMORY, accept_step: bool = True):
        self.stepper, self.guide, self.cfg, self.key = stepper, guide, cfg, key
        self.automaton = guide.automaton
        self.newline = self.automaton.newline
        self.codepoints = np.array([ord(c) for c in vocab.chars], dtype=np.uint32)
        self.steps = guide.steps
        root_state = stepper.to_rows(prompt_state)  # (K, S)
        logits = np.atleast_2d(prompt_logits)  # (K, V)
        self.cap = node_cap(len(vocab), root_state.shape[1], memory)
        # Room for the cap and a round's nodes beyond it (untouched rows take no memory); grown if needed.
        self.nodes = _Nodes(len(vocab), root_state.shape[1], self.cap + self.cap // 2 + min(4096, self.cap))
        self.accept_step = accept_step
        self.round = 0
        self.roots = len(logits)
        self.root_psi = np.ones(self.roots)  # each root's bound
        self.draws, self.mass_sum = 0, 0.0
        # Distinct accepted samples (root, text): their probability at the sampling settings, and its sum per root
        self.found: dict[tuple[int, str], float] = {}
        self.found_mass = np.zeros(self.roots)
        # The probability (at the sampling settings) of the accepted samples ruled out (Excluded), per root
        self.gone = np.zeros(self.roots)
        self.gone_for_good = np.zeros(self.roots)  # its part ruled out FOR_GOOD
        self.for_call: list[tuple[int, int]] = []  # (node, root) of each sample ruled out FOR_CALL
        roots = self.nodes.alloc(self.roots)  # rows 0..K-1
        n = self.nodes
        n.parent[roots], n.char[roots], n.depth[roots], n.dfa[roots] = -1, -1, 0, guide.start
        n.state[roots], n.key[roots] = root_state, roots.astype(np.uint64)
        self._fill(roots, logits, temp=False)

    @property
    def mass(self) -> ConstraintMass:
        """What the draws say of Z (one root's tree; a blend's is its LabelTree's)."""
        return ConstraintMass.of(self.mass_sum, self.draws, float(self.found_mass[0]),
                                 float(self.root_psi[0] + self.gone[0]))

    @property
    def exhausted(self) -> bool:
        """No draw can be accepted any more: every sample the constraints allow is ruled out (one root's tree)."""
        return self.root_psi[0] <= 0

    @property
    def memory(self) -> int:
        """Bytes its nodes take now."""
        return self.nodes.count * self.nodes.bytes_per_node

    @property
    def round_width(self) -> int:
        return round_width(self.nodes.bytes_per_node)

    def use_key(self, key: np.uint64) -> None:
        """Draw with another call's random key from now on (a warm tree, taken by a new call)."""
        self.key = key

    def run(self, indices: np.ndarray, roots: Optional[np.ndarray] = None, excluded: Optional[Excluded] = None) -> Results:
        """One round: attempts `indices` (each its own random stream) descend from their roots
        (`roots`; default the first) with the bounds as they are now; then the bounds on every node
        visited tighten, and the accepted samples that `excluded` rules out (see Excluded) are
        never drawn again."""
        r = len(indices)
        start = np.zeros(r, dtype=np.int64) if roots is None else roots.astype(np.int64)  # each attempt's root
        at = start.copy()  # each attempt's node
        alive = np.ones(r, dtype=bool)
        accepted = np.zeros(r, dtype=bool)
        ends = np.zeros(r, dtype=np.int64)  # the node each accepted attempt drew its newline at
        logp, kept, logq = np.zeros(r), np.zeros(r), np.zeros(r)
        t = np.zeros(r, dtype=np.int64)
        out = np.zeros((r, min(self.steps, 64)), dtype=np.uint32)  # (r, D): widened as the draws go on
        visited: list[np.ndarray] = []
        psi_roots = self.root_psi.copy()  # the roots' bounds at the round's start
        gone_roots = self.gone.copy()  # and the probability of the samples ruled out by then
        self.full = self.nodes.count >= self.cap  # then this round's new nodes live for the round only
        for d in range(self.steps):
            rows = np.flatnonzero(alive)
            if not rows.size:
                break
            nodes = at[rows]
            visited.append(nodes)
            go, c = self._step(nodes, indices[rows], d)
            alive[rows[~go]] = False
            rows, nodes, c = rows[go], nodes[go], c[go]
            logp[rows] += self.nodes.lsm[nodes, c]
            logq[rows] += np.log(self.nodes.probs[nodes, c])
            kept[rows] += self.nodes.kept[nodes]
            t[rows] += 1
            end = c == self.newline
            accepted[rows[end]] = True
            ends[rows[end]] = nodes[end]
            alive[rows[end]] = False
            if d == out.shape[1]:  # (a --length of millions takes only what the draws write)
                out = np.concatenate([out, np.zeros_like(out)], axis=1)
            out[rows[~end], d] = self.codepoints[c[~end]]
            at[rows[~end]] = self._children(nodes[~end], c[~end])
        texts = texts_of(out)
        self._learn(psi_roots, gone_roots, start, accepted, texts, logq)
        if excluded is not None:
            self._exclude(np.flatnonzero(accepted), ends, start, texts, logq, excluded)
        self._bound_up(visited)
        self._forget_round_nodes()
        self._evict()
        self.round += 1
        return Results([x if ok else None for x, ok in zip(texts, accepted.tolist())], logp, t, kept)

    def _step(self, nodes: np.ndarray, indices: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
        """For attempts at `nodes`: whether each goes on (probability N(s)/psi(s)), and the
        character it picks (probability p(c|s) psi(sc) / N(s))."""
        first, inverse = distinct(nodes)  # each node's weights summed once, however many attempts are there
        w = self.nodes.probs[nodes[first]] * self.nodes.psi[nodes[first]]  # (U, V)
        cdf = in_order_sums(w)[inverse]  # (R, V)
        total = cdf[:, -1]  # N(s)
        go = total > 0
        if self.accept_step:
            go &= uniforms(self.key, indices, 2 * d) * self._psi(nodes) < total
        return go, pick_from_sums(cdf, last_positive(w)[inverse], uniforms(self.key, indices, 2 * d + 1))

    def _psi(self, nodes: np.ndarray) -> np.ndarray:
        """The bounds of `nodes` themselves (kept in their parents' slots; a root's in root_psi)."""
        parent = self.nodes.parent[nodes]
        own = self.nodes.psi[np.maximum(parent, 0), self.nodes.char[nodes]]
        return np.where(parent < 0, self.root_psi[np.where(parent < 0, nodes, 0)], own)

    def _children(self, parents: np.ndarray, chars: np.ndarray) -> np.ndarray:
        """The nodes for these (parent, character) pairs, computing the new ones in one network step."""
        n = self.nodes
        found = n.child[parents, chars].astype(np.int64) - 1
        new = found < 0
        if new.any():
            pairs, inverse = np.unique(parents[new] * len(self.codepoints) + chars[new], return_inverse=True)
            p, c = pairs // len(self.codepoints), pairs % len(self.codepoints)
            temp = n.temp[p] | self.full
            rows = n.alloc(len(pairs))
            logits, state = self.stepper.step(c, self.stepper.from_rows(n.state[p]))
            n.state[rows] = self.stepper.to_rows(state)
            n.parent[rows], n.char[rows], n.depth[rows] = p, c, n.depth[p] + 1
            n.key[rows] = prefix_key(n.key[p], c)
            n.dfa[rows] = self.automaton.advance(n.dfa[p], c)
            n.child[p, c] = rows + 1
            kept = p[~temp]
            np.add.at(n.children, kept, 1)  # (a parent may get several children at once)
            n.pristine[kept] = False
            self._fill(rows, logits, temp)
            found[new] = rows[inverse.ravel()]
        n.used[found] = self.round
        return found

    def _fill(self, rows: np.ndarray, logits: np.ndarray, temp) -> None:
        """New nodes' distributions and their children's first bounds (what the automaton allows)."""
        n = self.nodes
        n.probs[rows] = sampling_probs(logits, self.cfg.temperature, self.cfg.top_k, self.cfg.top_p)
        lsm = log_softmax(logits)
        n.lsm[rows] = lsm
        allowed = self.automaton.allowed(n.dfa[rows], self.guide.n0 + n.depth[rows])
        n.psi[rows] = allowed
        n.kept[rows] = np.log(np.where(allowed, np.exp(lsm), 0.0).sum(axis=-1))
        n.pristine[rows], n.temp[rows], n.used[rows], n.pinned[rows] = True, temp, self.round, False

    def _learn(self, psi_roots: np.ndarray, gone_roots: np.ndarray, start: np.ndarray, accepted: np.ndarray,
               texts: list[str], logq: np.ndarray) -> None:
        """After a round, what its draws say of Z (each draw from root k, accepted or not, adds
        psi_k 1[accepted] + E_k at the round's start: its expectation is Z_k, since the draws
        accept (Z_k - E_k) / psi_k, E_k the probability of the samples ruled out, below) and the
        distinct samples found."""
        self.draws += len(accepted)
        drawn = np.bincount(start, minlength=self.roots)  # draws per root
        counts = np.bincount(start[accepted], minlength=self.roots)  # accepted draws per root
        for k in np.flatnonzero(drawn).tolist():
            self.mass_sum += float(psi_roots[k]) * int(counts[k]) + float(gone_roots[k]) * int(drawn[k])
        for i in np.flatnonzero(accepted).tolist():
            found = (int(start[i]), texts[i])
            if found not in self.found and len(self.found) < FOUND_KEPT:
                self.found[found] = q = float(np.exp(logq[i]))
                self.found_mass[found[0]] += q

    def _exclude(self, accepted: np.ndarray, ends: np.ndarray, start: np.ndarray, texts: list[str],
                 logq: np.ndarray, excluded: Excluded) -> None:
        """The accepted draws `excluded` rules out: the bound of their newline's slot becomes 0, so
        no later draw returns them, and their node is pinned, never evicted (a fresh one would not
        know). A round-only node keeps nothing: there the rule is the drawing's rejection alone."""
        n, newline = self.nodes, self.newline
        for i in accepted.tolist():
            node, root = int(ends[i]), int(start[i])
            if n.temp[node] or n.psi[node, newline] == 0:
                continue
            how = excluded(root, texts[i])
            if how == KEPT:
                continue
            q = float(np.exp(logq[i]))
            n.psi[node, newline] = 0.0
            n.pinned[node] = True
            self.gone[root] += q
            if how == FOR_CALL:
                self.for_call.append((node, root))
            else:
                self.gone_for_good[root] += q

    def end_call(self) -> None:
        """Give back what the call drawing now ruled out for itself (FOR_CALL), so that the tree can
        serve another: each such sample's newline slot is 1 again (what the automaton allowed), and
        every bound on its path up to the root rises by what that adds below it, so each bound stays
        an upper bound and N(s) <= psi(s) still holds."""
        n, newline = self.nodes, self.newline
        for node, root in self.for_call:
            n.psi[node, newline] = 1.0
            n.pinned[node] = False
            rise = float(n.probs[node, newline])
            while n.parent[node] >= 0:
                parent, c = int(n.parent[node]), int(n.char[node])
                n.psi[parent, c] += rise
                rise *= float(n.probs[parent, c])
                node = parent
            self.root_psi[root] += rise
        self.gone = self.gone_for_good.copy()
        self.for_call.clear()

    def _bound_up(self, visited: list[np.ndarray]) -> None:
        """psi(s) := N(s) on the nodes visited, deepest first, each from its children's new bounds."""
        if not self.accept_step:
            return
        n = self.nodes
        for nodes in reversed(visited):
            nodes = np.unique(nodes)
            nodes = nodes[~n.temp[nodes]]  # a round-only node passes no bound up
            total = in_order_sums(n.probs[nodes] * n.psi[nodes])[:, -1]
            inner = n.parent[nodes] >= 0
            n.psi[n.parent[nodes[inner]], n.char[nodes[inner]]] = total[inner]
            self.root_psi[nodes[~inner]] = total[~inner]

    def _forget_round_nodes(self) -> None:
        n = self.nodes
        temp = np.flatnonzero(n.temp[: n.top])  # (a released node is never temp)
        if temp.size:
            n.child[n.parent[temp], n.char[temp]] = 0
            n.temp[temp] = False
            n.release(temp)

    def _evict(self) -> None:
        """Down to 80% of the cap, leaving room for the next round's nodes: the least recently
        used leaves that never had a child."""
        n = self.nodes
        over = n.count - self.cap * 4 // 5
        if over <= 0:
            return
        live = np.ones(n.top, dtype=bool)
        live[n.free] = False
        live[: self.roots] = False  # the roots stay
        leaves = np.flatnonzero(live & n.pristine[: n.top] & ~n.pinned[: n.top] & (n.children[: n.top] == 0))
        leaves = leaves[np.lexsort((n.key[leaves], n.used[leaves]))][:over]  # oldest first, then by prefix
        if leaves.size:
            n.child[n.parent[leaves], n.char[leaves]] = 0
            np.subtract.at(n.children, n.parent[leaves], 1)
            n.release(leaves)


class LabelTree:
    """A blend of labels under exact constraints: the label is the draw's first choice, above the
    roots of one PrefixTree, one per label, with the same rule one level up. With w_k the blend's
    weights and psi_k the bound of label k's root, N = sum_k w_k psi_k and psi the bound of this
    top node:

        go on with probability N / psi, else the draw is rejected;
        pick label k with probability w_k psi_k / N, then draw from k's root.

    A draw returning x under label k then has probability w_k p_k(x) 1[x accepted] / psi: the
    mixture conditioned on the constraints, exactly (so a label the constraints rarely allow comes
    less often, as it should). After each round psi := N. The labels' prefixes share one tree's
    memory (its least recently used leaves go first, whatever their label) and each round's
    network steps: a blend of hundreds of labels draws as one tree does, not as hundreds of small
    ones.
    """

    def __init__(self, tree: PrefixTree, weights: np.ndarray, key: np.uint64):
        self.tree, self.weights, self.key = tree, weights, key
        self.psi = 1.0
        self.draws, self.mass_sum = 0, 0.0

    @property
    def mass(self) -> ConstraintMass:
        lower = _weighted(self.weights, self.tree.found_mass)
        return ConstraintMass.of(self.mass_sum, self.draws, lower, self.psi + self._gone())

    @property
    def exhausted(self) -> bool:
        return self.psi <= 0

    def end_call(self) -> None:
        """PrefixTree.end_call, and this top node's bound raised by what its roots' rose."""
        before = self.tree.root_psi.copy()
        self.tree.end_call()
        self.psi += _weighted(self.weights, self.tree.root_psi - before)

    def _gone(self) -> float:
        """The blend's probability of the samples ruled out (PrefixTree.gone, weighted)."""
        return _weighted(self.weights, self.tree.gone)

    @property
    def memory(self) -> int:
        return self.tree.memory

    @property
    def round_width(self) -> int:
        return self.tree.round_width

    def use_key(self, key: np.uint64) -> None:
        self.key = key
        self.tree.use_key(key)

    def run(self, indices: np.ndarray, excluded: Optional[Excluded] = None) -> Results:
        """One round: each attempt picks its label (or is rejected), then descends from that label's root."""
        w = self._mixed()  # (P,)
        total, psi, gone = float(in_order_sums(w)[-1]), self.psi, self._gone()
        r = len(indices)
        go = (uniforms(self.key, indices, LABEL_GO) * psi < total) if total > 0 else np.zeros(r, dtype=bool)
        pick = pick_weighted(np.broadcast_to(w, (r, len(w))), uniforms(self.key, indices, LABEL_PICK)) \
            if total > 0 else np.zeros(r, dtype=np.int64)
        texts: list[Optional[str]] = [None] * r
        logp, scored, kept = np.zeros(r), np.zeros(r, dtype=np.int64), np.zeros(r)
        self.picked = np.where(go, pick, -1)  # each attempt's label (-1: rejected before one)
        rows = np.flatnonzero(go)
        if rows.size:
            res = self.tree.run(indices[rows], roots=pick[rows], excluded=excluded)
            for i, text in zip(rows.tolist(), res.texts):
                texts[i] = text
            logp[rows], scored[rows], kept[rows] = res.logp, res.scored, res.kept
        self.draws += r
        self.mass_sum += psi * sum(text is not None for text in texts) + gone * r
        self.psi = float(in_order_sums(self._mixed())[-1])
        return Results(texts, logp, scored, kept)

    def _mixed(self) -> np.ndarray:
        """w_k psi_k: each label's weight times its root's bound."""
        return self.weights * self.tree.root_psi


def _weighted(weights: np.ndarray, values: np.ndarray) -> float:
    """sum_k w_k v_k, added in order (as an exported page adds it)."""
    return float(sum(w * v for w, v in zip(weights.tolist(), values.tolist())))


class WarmTrees:
    """Trees kept between calls without a seed (see "Warm trees" above), by what decides their
    bounds: the prompt, the labels, the constraints and the settings. A call takes its tree out
    (or a new one) and gives it back when it has its samples, so a tree serves one call at a time
    (two calls at once with the same key draw from two trees; the one given back last is kept)
    and a call that fails keeps nothing. At most `memory` bytes of nodes are kept: the least
    recently given back trees go first."""

    def __init__(self, memory: int = WARM_MEMORY):
        self.memory = memory
        self._trees: OrderedDict[Hashable, "PrefixTree | LabelTree"] = OrderedDict()
        self._lock = threading.Lock()  # a server's calls take and give back from several threads

    def take(self, key: Hashable, make: Callable[[], "PrefixTree | LabelTree"]) -> "PrefixTree | LabelTree":
        with self._lock:
            tree = self._trees.pop(key, None)
        return tree if tree is not None else make()

    def give_back(self, key: Hashable, tree: "PrefixTree | LabelTree") -> None:
        if tree.memory > self.memory:
            return
        with self._lock:
            self._trees[key] = tree
            self._trees.move_to_end(key)
            while sum(t.memory for t in self._trees.values()) > self.memory:
                self._trees.popitem(last=False)

    def __len__(self) -> int:
        return len(self._trees)
