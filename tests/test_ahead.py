"""Samples drawn ahead (chargen.sampling.ahead): stocks per key, each sample given once, waiters
served in order, the level following the demand; with numbered samples standing in for a drawing."""

from __future__ import annotations

import itertools

from chargen.sampling.ahead import CHUNK, MIN_LEVEL, DrawnAhead


class Waiter:
    def __init__(self):
        self.gone = False

    def done(self) -> bool:
        return self.gone


class Drawer:
    """Draws numbered samples: every sample a new number, so one given twice shows."""

    def __init__(self):
        self.numbers = itertools.count()

    def __call__(self, k: int) -> list[int]:
        return [next(self.numbers) for _ in range(k)]


def test_a_key_asked_once_gets_no_stock_and_asked_again_waits_for_its_first_drawings():
    ahead, draw = DrawnAhead(capacity=4096), Drawer()
    first = ahead.take("k", 10, Waiter())
    assert first.samples is None and not first.waits and first.due == []  # nothing drawn for a one-off
    w = Waiter()
    second = ahead.take("k", 10, w)
    assert second.samples is None and second.waits
    # the level (doubled: the demand outran an empty stock) and what the waiter is owed, CHUNK a drawing
    assert sum(second.due) == 2 * max(MIN_LEVEL, 80) + 10 and max(second.due) <= CHUNK
    settled = []
    for due in second.due:
        settled += ahead.add("k", draw(due), due)
    assert settled == [(w, list(range(10)))]  # the waiter's samples: the first drawn
    assert ahead.stats.waited == 1 and ahead.stats.hits == 0


def test_every_sample_is_given_once_and_the_stock_refills_below_half_its_level():
    ahead, draw = DrawnAhead(capacity=4096), Drawer()
    ahead.take("k", 10)
    given: list[int] = []
    pending: list[int] = []
    for i in range(2000):
        w = Waiter()
        take = ahead.take("k", 10, w)
        pending += take.due
        if take.samples is not None:
            given += take.samples
        if i % 7 == 0 or take.waits:  # the drawings end now and then (and whenever one waits)
            for due in pending:
                for waiter, samples in ahead.add("k", draw(due), due):
                    assert samples is not None
                    given += samples
            pending = []
    assert len(given) == len(set(given)) == 20_000  # each sample once, every request served
    assert ahead.stats.hits > 1900 and ahead.stats.misses == 0
    assert ahead.stats.drawn <= 20_000 + 4096  # what was drawn: what was given, and at most a level more


def test_the_level_follows_the_demand_up_to_the_capacity():
    ahead, draw = DrawnAhead(capacity=1024), Drawer()
    ahead.take("k", 10)
    dues = [sum(ahead.take("k", 10).due) for _ in range(4)]  # no waiter, nothing drawn yet: misses
    assert ahead.stats.misses == 4
    assert dues == [512, 0, 0, 0]  # the level 256 -> 512 (drawn) -> 1024, the capacity; half of it is being drawn
    ahead.add("k", draw(512), 512)
    hit = ahead.take("k", 10)
    assert hit.samples is not None and sum(hit.due) == 1024 - 502  # below half the level: up to it
    assert DrawnAhead(capacity=0).take("k", 1, Waiter()).due == []  # 0: no stock at all
    big = DrawnAhead(capacity=100)
    big.take("k", 60)
    assert big.take("k", 60, Waiter()).due == [] and big.stats.misses == 0  # more than half the capacity: its own


def test_a_failed_drawing_sends_its_waiters_to_draw_their_own_and_ends_the_stock_and_one_gone_is_skipped():
    ahead, draw = DrawnAhead(capacity=4096), Drawer()
    ahead.take("k", 5)
    gone, stays = Waiter(), Waiter()
    dues = ahead.take("k", 5, gone).due
    dues += ahead.take("k", 5, stays).due
    gone.gone = True  # its request went away: its samples go to the next
    assert ahead.add("k", draw(dues[0]), dues[0]) == [(stays, [0, 1, 2, 3, 4])]
    late = Waiter()
    take = ahead.take("k", 2000, late)  # more than is ready: it waits for what is drawn
    assert take.waits and take.samples is None
    failed = []
    for due in dues[1:] + take.due:
        failed += ahead.add("k", [], due)  # every other drawing fails
    assert failed == [(late, None)]  # nothing more is being drawn: it draws its own
    assert ahead.stats.misses == 1 and ahead.stats.waited == 1
    after = ahead.take("k", 5, Waiter())  # a key whose drawing failed is drawn ahead no more
    assert after.samples is None and not after.waits and after.due == [] and ahead.stats.misses == 2


def test_stocks_are_kept_for_the_most_recently_asked_keys_but_never_dropped_while_drawing():
    ahead, draw = DrawnAhead(capacity=4096, keys=2), Drawer()
    dues = {}
    for key in ("a", "b", "c"):
        ahead.take(key, 10)
        dues[key] = ahead.take(key, 10).due  # a stock, drawing
    for key in ("a", "b", "c"):
        for due in dues[key]:
            ahead.add(key, draw(due), due)
    assert all(ahead.take(key, 10).samples is not None for key in ("a", "b", "c"))  # all three kept while drawing
    ahead.take("d", 10)
    ahead.take("d", 10)  # a fourth stock: the least recently asked idle ones go
    assert ahead.take("a", 10).samples is None  # "a" was dropped: asked again, it starts over
