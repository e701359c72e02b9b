import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dataclasses
import io

from chargen.training.data import (
    PAD,
    LineBatches,
    WindowLoader,
    check_trainable,
    lines_per_batch,
    prepare_training_data,
    read_corpus,
    split_train_val,
    stream_view,
    windows_per_epoch,
)
from chargen.errors import CorpusError
from chargen.training.ingest import line_stats, text_chunks


def decode(raw: bytes, source: str) -> str:
    return "".join(t if t is not None else b.decode("ascii") for b, t in text_chunks(io.BytesIO(raw), source))


def windows(streams, seq):
    """Every window of an epoch as the trainer's loader hands them out, as numpy arrays."""
    loader = WindowLoader(streams, seq)
    for k in range(len(loader)):
        x, y, _ = loader.window(k)
        yield k, x.numpy(), y.numpy()


@given(n=st.integers(2, 3000), batch=st.integers(1, 16), seq=st.integers(1, 64))
@settings(max_examples=200, deadline=None)
def test_tbptt_layout_sees_each_character_once_in_order(n, batch, seq):
    ids = np.arange(n, dtype=np.int64)
    if n // batch < 2:
        return
    streams = stream_view(ids, batch)
    length = n // batch
    seen_inputs = [[] for _ in range(batch)]
    for k, x, y in windows(streams, seq):
        assert x.shape == y.shape == (batch, seq)
        assert (y == x + 1).all()  # targets are the next character
        for i in range(batch):
            seen_inputs[i].extend(x[i].tolist())
    w = windows_per_epoch(streams, seq)
    for i in range(batch):
        # Stream i is the i-th contiguous slice, read in order, window k+1 right after window k.
        assert seen_inputs[i] == list(range(i * length, i * length + w * seq))
    # Every window's characters are distinct: no character is seen twice in an epoch.
    everything = [c for s in seen_inputs for c in s]
    assert len(everything) == len(set(everything))
    # What is left out is less than one window per stream plus the final target.
    assert length - w * seq <= seq


def test_window_k_plus_one_follows_window_k():
    streams = stream_view(np.arange(100), 4)
    ws = list(windows(streams, 5))
    for (_, x0, _), (_, x1, _) in zip(ws, ws[1:]):
        assert (x1[:, 0] == x0[:, -1] + 1).all()


def test_bom_and_crlf():
    assert decode(b"\xef\xbb\xbfab\r\ncd\r\n", "f") == "ab\ncd\n"


@pytest.mark.parametrize(
    "raw, needle",
    [
        (b"", "empty"),
        (b"  \n\t \n", "only whitespace"),
        (b"abc\xff\xfedef", "byte 3"),
        (b"caf\xe9 latin-1", "not valid UTF-8"),
        (b"\xff\xfeh\x00i\x00", "UTF-16"),
        (b"abc\x00def", "NUL"),
    ],
)
def test_bad_bytes(raw, needle):
    with pytest.raises(CorpusError, match=needle):
        decode(raw, "corpus.txt")


def test_read_corpus_joins_files_and_names_errors(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one")
    b.write_text("two\n")
    c = read_corpus([str(a), str(b)])
    assert c.text == "one\ntwo\n" and c.name == "a"
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus([str(tmp_path / "missing.txt")])
    with pytest.raises(CorpusError, match="directory"):
        read_corpus([str(tmp_path)])


def test_split_starts_validation_at_a_line():
    text = "".join(f"line{i}\n" for i in range(100))
    train, val = split_train_val(text, 0.1)
    assert train + val == text
    assert train.endswith("\n") and val.startswith("line")
    assert 0.08 < len(val) / len(text) < 0.12


def test_a_short_list_holds_out_whole_lines():
    # Ten percent of a few names falls inside the last one: that line is held out whole.
    for text, last in [("Ada\nBo\nCyrielle\n", "Cyrielle\n"), ("Ada\nBo\n", "Bo\n"), ("Ada\nBo\nCyrielle", "Cyrielle")]:
        assert split_train_val(text, 0.1) == (text[: -len(last)], last)


def test_too_short_for_one_window():
    with pytest.raises(CorpusError, match="too short"):
        check_trainable(10, seq_len=32, batch_size=4, source="x.txt")
    assert check_trainable(100, seq_len=32, batch_size=64, source="x.txt") == 3


def test_line_orientation():
    from tests.conftest import make_names

    assert line_stats(make_names(100)).line_oriented()
    prose = ("It was the best of times, it was the worst of times, it was the age of wisdom.\n"
             "It was the age of foolishness.\n\n") * 50
    assert not line_stats(prose).line_oriented()
    assert not line_stats("one long line without any newline " * 100).line_oriented()
    # A few short lines are a list too (too short to train on as running text), one line is not.
    assert line_stats("Ada\nBo\nCyrielle\n").line_oriented()
    assert not line_stats("Ada\n").line_oriented()
    assert line_stats("Ada\nBo\n\nCyrielle\n").line_oriented()  # one stray blank line: still a list
    assert not line_stats("Ada\nBo\n\nCyrielle\n\nDu\n").line_oriented()  # two in six lines: paragraphs
    assert not line_stats("Ada\n\n\nBo\n").line_oriented()
    assert line_stats("\nAda\nBo\nCyrielle\n\n\n").line_oriented()  # at either end: nothing said
    assert not line_stats("\n\nAda\n\n").line_oriented()


@given(n=st.integers(2, 2000), batch=st.integers(1, 9), seq=st.integers(1, 40), chunk=st.integers(1, 50),
       wide=st.booleans(), data=st.data())
@settings(max_examples=100, deadline=None)
def test_file_streams_read_the_same_windows_as_the_view(tmp_path_factory, n, batch, seq, chunk, wide, data):
    """FileStreams (reads from the ids file) == stream_view (slices of the array), rows and all."""
    from chargen.training.data import FileStreams

    if n // batch < 2:
        return
    dtype = np.uint16 if wide else np.uint8
    ids = (np.arange(n) * 7919 % (60000 if wide else 251)).astype(dtype)
    path = tmp_path_factory.mktemp("ids") / "c.ids"
    ids.tofile(path)
    first = data.draw(st.integers(0, batch - 1))
    rows = slice(first, data.draw(st.integers(first + 1, batch)))
    view = stream_view(ids, batch)[rows]
    streams = FileStreams(path, dtype, batch, n // batch, rows=rows, chunk=chunk)
    assert streams.shape == view.shape
    for k in range(windows_per_epoch(view, seq)):
        block = streams.block(k * seq, seq + 1)
        assert block.dtype == dtype and np.array_equal(block, view[:, k * seq : k * seq + seq + 1])
    for i in range(view.shape[0]):
        assert np.array_equal(streams.row(i), view[i])
    streams.close()


@settings(max_examples=25, deadline=None)
@given(n_lines=st.integers(1, 300), per_batch=st.integers(1, 40), world=st.sampled_from([1, 2, 4]),
       seed=st.integers(-2**40, 2**40), data=st.data())
def test_every_epoch_batches_each_line_once_and_differently(n_lines, per_batch, world, seed, data):
    """Line mode regroups a list every epoch: each epoch's batches hold every line once (but the
    last partial batch's), "\n" + line + "\n" padded, with its label; the same epoch is the same
    batches again (resuming is exact), and the processes' rows make up the whole batch."""
    per_batch = per_batch * world
    rng = np.random.default_rng(abs(seed))
    lines = [rng.integers(0, 50, data.draw(st.integers(0, 9))) for _ in range(n_lines)]
    labels = np.arange(n_lines)  # a line's label is its index: which line each row holds
    full = LineBatches.of(lines, 99, per_batch, seed, labels=labels)
    shards = [LineBatches.of(lines, 99, per_batch, seed, slice(r * per_batch // world, (r + 1) * per_batch // world),
                             labels) for r in range(world)]
    groupings = set()
    for epoch in range(4):
        batches = full.for_epoch(epoch)
        assert len(batches.seqs) == n_lines // per_batch
        held = np.concatenate(batches.labels) if batches.seqs else np.zeros(0, int)
        assert len(set(held.tolist())) == held.size == n_lines // per_batch * per_batch
        assert batches.chars == sum(len(lines[i]) + 1 for i in held.tolist())  # each line's characters and newline
        for seq, which in zip(batches.seqs, batches.labels):
            for row, i in zip(seq, which):
                body = row[row != PAD]
                assert body[0] == body[-1] == 99 and body[1:-1].tolist() == lines[i].tolist()
        again = full.for_epoch(epoch)
        assert all((a == b).all() for a, b in zip(batches.seqs, again.seqs))
        parts = [s.for_epoch(epoch) for s in shards]
        for k, seq in enumerate(batches.seqs):
            assert (np.concatenate([p.seqs[k] for p in parts]) == seq).all()
        groupings.add(tuple(tuple(sorted(w.tolist())) for w in batches.labels))
    if n_lines // per_batch >= 6:  # 720 orders of the batches alone: four equal epochs would be a 1-in-3e8 chance
        assert len(groupings) > 1  # the epochs do not all repeat one grouping


def test_a_list_shorter_than_two_batches_trains_every_line_each_epoch():
    """50 lines at batch size 32: one batch of all 50 each epoch (it was 32 of them, the other 18
    left out of the epoch); 64 lines and more: batches of 32, as before."""
    from chargen.config import TrainConfig
    from chargen.training.ingest import EncodedCorpus

    assert lines_per_batch(50, 8.0, 32, 64) == 50 and lines_per_batch(20, 8.0, 32, 64) == 20
    assert lines_per_batch(64, 8.0, 32, 64) == 32 and lines_per_batch(100, 8.0, 32, 64) == 32
    text = "".join(f"name{i:02d}\n" for i in range(50))
    notes = []
    data = prepare_training_data(EncodedCorpus.from_text(text), TrainConfig(batch_size=32, val_fraction=0.0),
                                 notice=notes.append)
    assert data.n_windows == 1 and data.line_batches.lines_per_batch == 50
    assert data.train_chars == len(text)  # every line and its newline, each epoch
    assert "the list is short: 50 lines a batch" in notes


def test_empty_lines_at_a_lists_ends_change_nothing():
    """Ten names and an empty line after them (an editor's habit) were prose: too short to train.
    Empty lines at either end are no lines of the list: it trains as the names alone."""
    from chargen.config import TrainConfig
    from chargen.training.ingest import EncodedCorpus

    names = "".join(f"{n}\n" for n in ("Ada", "Bo", "Cyrielle", "Dan", "Eve", "Fay", "Gus", "Hal", "Ida", "Jo"))
    config = TrainConfig(batch_size=4, val_fraction=0.3)
    plain = prepare_training_data(EncodedCorpus.from_text(names), config)
    for text in (names + "\n", "\n" + names + "\n\n"):
        data = prepare_training_data(EncodedCorpus.from_text(text), config)
        assert data.line_oriented and data.line_batches is not None
        assert [v.tolist() for v in data.val_lines] == [v.tolist() for v in plain.val_lines]
        assert data.train_chars == plain.train_chars and data.training_lines == plain.training_lines


@pytest.mark.parametrize("labelled", [False, True])
def test_a_lists_overlong_line_trains_its_first_characters(labelled):
    """A list with one line of 20,000 characters trained it whole: every row of its batch stepped
    20,000 times (a step of minutes past --time, a GB of memory). A line past MAX_LIST_LINE trains
    its first MAX_LIST_LINE characters, and says so; the other lines are untouched, in the
    training batches, the validation lines, the lines --novel keeps, and a validation file's."""
    from chargen.config import TrainConfig
    from chargen.training.data import MAX_LIST_LINE
    from chargen.training.ingest import EncodedCorpus
    from chargen.training.labels import LineLabels

    names = [f"name{i:03d}" for i in range(199)]
    long = "na" * 10_000
    text = "".join(f"{n}\n" for n in names[:150]) + long + "\n" + "".join(f"{n}\n" for n in names[150:])
    corpus = EncodedCorpus.from_text(text)
    if labelled:
        of_line = np.array([len(line) % 2 for line in text.splitlines()], dtype=np.int32)
        corpus = dataclasses.replace(corpus, labels=LineLabels(["k0", "k1"], of_line))
    notes = []
    data = prepare_training_data(corpus, TrainConfig(batch_size=8, val_fraction=0.5), notice=notes.append)
    assert data.line_batches is not None
    lengths = sorted(data.line_batches.pool.lengths.tolist() + [len(v) - 1 for v in data.val_lines])
    assert lengths[-1] == MAX_LIST_LINE and lengths[-2] == len("name000") and len(lengths) == 200
    kept = data.training_lines if not labelled else [key.split("\t", 1)[1] for key in data.training_lines]
    assert long[:MAX_LIST_LINE] in kept and long not in kept
    where = "" if labelled else "line 151, "  # (a labelled corpus's text is not its file's lines)
    assert notes[0] == (f"{corpus.sources[0]}: 1 line longer than {MAX_LIST_LINE} characters (the longest: {where}"
                        f"20,000 characters, 'nananananananananananana'...) trains on its first {MAX_LIST_LINE}, "
                        f"as a list trains each line whole")
    if not labelled:  # a validation file's long line, too
        notes.clear()
        data = prepare_training_data(EncodedCorpus.from_text("".join(f"{n}\n" for n in names)), TrainConfig(batch_size=8),
                                     val_text="name001\n" + long + "\n", notice=notes.append)
        assert sorted(len(v) - 1 for v in data.val_lines) == [len("name001"), MAX_LIST_LINE]
        assert notes[0].startswith("the validation file: 1 line longer than")


def test_line_mode_given_makes_a_list_of_longer_lines():
    """Titles of about 45 characters are no list by the rule (median line at most 32), and
    --line-mode, which the help offers for exactly this, was not heard: the corpus trained as
    prose and sampled as prose. Given, it trains the lines as a list (one sample a line)."""
    from chargen.config import TrainConfig
    from chargen.training.data import is_list
    from chargen.training.ingest import EncodedCorpus

    rng = np.random.default_rng(0)
    words = ["Anna", "Maria", "Petersen", "Lou", "Charlotte", "Bo", "Jean-Luc", "Amadeus"]
    text = "".join(" ".join(rng.choice(words, size=rng.integers(6, 9))) + "\n" for _ in range(300))
    corpus = EncodedCorpus.from_text(text)
    assert not is_list(corpus) and is_list(corpus, True) and not is_list(corpus, False)
    prose = prepare_training_data(corpus, TrainConfig(batch_size=8, seq_len=32))
    assert not prose.line_oriented and prose.line_batches is None
    lines = prepare_training_data(corpus, TrainConfig(batch_size=8, seq_len=32, line_mode=True))
    assert lines.line_oriented and lines.line_batches is not None
    assert 25 <= len(lines.val_lines) <= 35 and lines.training_lines == sorted(set(text.splitlines()))
