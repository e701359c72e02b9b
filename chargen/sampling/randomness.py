"""Counter-based random numbers: the uniform number that picks character t of attempt i is a hash
of (key, i, t), a pure function with no generator state.

So the same seed gives the same samples whatever the batch width, whichever backend (numpy or
torch) computed the probabilities, and however many earlier draws were rejected.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

_MASK, _M1_INT, _M2_INT, _GOLD_INT = (1 << 64) - 1, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15
_M1, _M2, _GOLD = np.uint64(_M1_INT), np.uint64(_M2_INT), np.uint64(_GOLD_INT)


def mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a good 64-bit hash, vectorised."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _mix_int(z: int) -> int:
    """mix on one Python int, modulo 2**64 as uint64 arithmetic is (tested equal): a key is
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
        z = mix(sample_idx.astype(np.uint64) * _GOLD + np.asarray(t).astype(np.uint64) + key)
        z = mix(z ^ key)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def random_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 1


class Seeds:
    """Seeds for calls that give none: a key from the OS once, then a hash of (key, count) per
    call. A server draws one per unseeded request, and os.urandom per request is a system call
    that hands the GIL to the batcher's thread and waits to get it back. A process forked from
    this one (a server's worker) draws a key of its own at its first call, so that the two never
    draw the same seeds."""

    def __init__(self) -> None:
        self._pid, self._key, self._count = os.getpid(), random_seed(), itertools.count()

    def __call__(self) -> int:
        if os.getpid() != self._pid:  # (getpid keeps the GIL: no hand-over)
            self._pid, self._key, self._count = os.getpid(), random_seed(), itertools.count()
        return int(derive_key(self._key, next(self._count))) >> 1  # next() on a count is atomic under the GIL
