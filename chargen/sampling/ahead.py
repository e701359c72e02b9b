"""Samples drawn ahead, for a server's requests that ask for the same plain samples again and again.

A request that gives no seed asks for independent samples of the model at its settings. Samples
drawn a moment before it arrived, at the same settings, are exactly that: each its own attempt
with its own random stream (chargen.sampling.randomness), each given out once. So a server that
sees one plain request many times (a names API's clients, the playground's button) keeps a stock
of such samples per settings and answers from it at once, with no network step between the
request and its answer; the stock is drawn behind the requests, many samples a batch, where the
batch is widest and a sample cheapest.

    stock:    per key (the model and the request's settings but n), the samples drawn and not yet
              given out, oldest first; what is being drawn for it; the requests waiting for that
    level:    max(MIN_LEVEL, 8 n) when a key is first asked for again, doubled each time a request
              finds too few ready (the stock follows the demand), at most `capacity`
    refill:   when what is ready and being drawn, less what waiting requests are owed, falls below
              half the level: the difference to the level, as drawings of at most CHUNK samples
              (the caller's), so that each ends within a few steps and its waiters go
    waiting:  a request that finds too few ready waits for what is being drawn (in arrival order)
              instead of drawing its own beside it; should a drawing fail, it draws its own, and
              so do the key's later requests (no drawing is made for it again: a constraint too
              rare for a server's draw limit is not drawn ahead over and over)

Which requests qualify is the caller's to say (chargen.serve: no seed, no `unique`, `novel` or
`exclude`, one prompt, line samples; plain ones in the server's process, constrained ones in its
side process): those whose samples are independent draws, so
that taking them in any order, at any time, is the same as drawing them then. A key asked for
once gets no stock (nothing is drawn for a request never repeated); at most `keys` keys keep
stocks, the least recently asked dropped first (never one with samples being drawn). Nothing
here draws or waits: the caller draws what `take` says is due, hands the samples to `add`, and
settles the waiters `add` returns. One thread (a server's event loop) calls it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Hashable, Optional

MIN_LEVEL = 256  # the least a stock is drawn up to (a refill smaller than this is a narrow batch)
CHUNK = 256  # samples a drawing for a stock holds at most: it ends (and its waiters go) within a few steps


@dataclass
class _Stock:
    level: int
    ready: deque = field(default_factory=deque)  # samples drawn and not given out, oldest first
    drawing: int = 0  # samples being drawn for it
    waiting: deque = field(default_factory=deque)  # (waiter, n) of requests waiting for them, oldest first
    failed: bool = False  # a drawing for it failed: no more are made (its requests draw their own)

    def owed(self) -> int:
        return sum(n for _, n in self.waiting)


@dataclass
class Take:
    """What `take` says: the request's samples (None: not now), whether it waits for them (its
    waiter is settled by a later `add`), and the drawings to make for the stock now (how many
    samples each, at most CHUNK)."""

    samples: Optional[list[Any]]
    waits: bool
    due: list[int]


@dataclass
class AheadStats:
    """Requests answered from the stock at once (hits), after waiting for it (waited), or drawn
    when they came (misses); samples drawn for the stocks."""

    hits: int = 0
    waited: int = 0
    misses: int = 0
    drawn: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "waited": self.waited, "misses": self.misses, "drawn": self.drawn}


class DrawnAhead:
    """Stocks of samples per key (see the module docstring).

        take = ahead.take(key, n, waiter)   # waiter: anything with done(), e.g. an asyncio future
        for due in take.due: draw `due` samples at the key's settings, then
            for waiter, samples in ahead.add(key, drawn, due): settle waiter with samples
        take.samples: the answer now; take.waits: the waiter's samples come (None: draw them)
    """

    def __init__(self, capacity: int, keys: int = 16):
        self.capacity, self.keys = capacity, keys
        self.stats = AheadStats()
        self._seen: OrderedDict[Hashable, Optional[_Stock]] = OrderedDict()  # keys asked for, a stock once asked again

    def take(self, key: Hashable, n: int, waiter: Any = None) -> Take:
        """The n oldest samples of the key's stock; or, where too few are ready, the waiter queued
        for what is drawn now (no waiter: nothing, the request draws its own); with the drawings
        to make for the stock now. No stock (a key asked for the first time): nothing."""
        if self.capacity <= 0 or 2 * n > self.capacity:
            return Take(None, False, [])
        stock = self._ask(key, n)
        if stock is None:
            return Take(None, False, [])
        if stock.failed:
            self.stats.misses += 1
            return Take(None, False, [])
        if len(stock.ready) >= n and not stock.waiting:
            self.stats.hits += 1
            return Take([stock.ready.popleft() for _ in range(n)], False, self._due(stock))
        stock.level = min(self.capacity, 2 * stock.level)  # the demand outran the stock
        if waiter is None:
            self.stats.misses += 1
            return Take(None, False, self._due(stock))
        stock.waiting.append((waiter, n))  # (what is drawn now counts what it is owed)
        return Take(None, True, self._due(stock))

    def add(self, key: Hashable, samples: list[Any], due: int) -> list[tuple[Any, Optional[list[Any]]]]:
        """The samples of a drawing `take` made due (`due` of them; none where it failed) into the
        key's stock; returns the waiters to settle now, each with its samples, or with None where
        nothing more is being drawn for it (the request then draws its own)."""
        stock = self._seen.get(key)
        if stock is None:
            return []
        stock.drawing = max(0, stock.drawing - due)  # (a stock dropped and made anew meanwhile)
        stock.ready.extend(samples)
        stock.failed |= due > 0 and not samples  # (a rare constraint past the draw limit: not again and again)
        settled = []
        while stock.waiting:
            waiter, n = stock.waiting[0]
            if waiter.done():  # its request went away
                stock.waiting.popleft()
            elif len(stock.ready) >= n:
                stock.waiting.popleft()
                settled.append((waiter, [stock.ready.popleft() for _ in range(n)]))
                self.stats.waited += 1
            elif not stock.drawing or stock.failed:  # nothing (more) coming: the rest draw their own
                settled.extend((w, None) for w, _ in stock.waiting)
                self.stats.misses += len(stock.waiting)
                stock.waiting.clear()
            else:
                break
        while len(stock.ready) > stock.level:
            stock.ready.pop()  # (the newest: drawn for requests that went away)
        return settled

    def _due(self, stock: _Stock) -> list[int]:
        """The drawings to make for the stock now: up to its level and what the waiting are owed,
        once what is ready and being drawn falls below half of that; CHUNK samples a drawing."""
        want = stock.level + stock.owed()
        have = len(stock.ready) + stock.drawing
        if 2 * have >= want:
            return []
        stock.drawing += want - have
        self.stats.drawn += want - have
        return [min(CHUNK, want - have - k) for k in range(0, want - have, CHUNK)]

    def _ask(self, key: Hashable, n: int) -> Optional[_Stock]:
        """The key's stock, made on its second ask; the key marked most recently asked."""
        if key not in self._seen:
            self._seen[key] = None
            once = [k for k, s in self._seen.items() if s is None]
            for old in once[: max(0, len(once) - 4 * self.keys)]:  # keys asked once are remembered a while
                del self._seen[old]
            return None
        self._seen.move_to_end(key)
        if self._seen[key] is None:
            self._seen[key] = _Stock(level=min(self.capacity, max(MIN_LEVEL, 8 * n)))
            idle = [k for k, s in self._seen.items() if s is not None and not s.drawing]
            for old in idle[: max(0, len(idle) - self.keys)]:  # the least recently asked first
                del self._seen[old]
        return self._seen[key]
