"""Streaming ingest and the encoded-corpus cache."""

import bz2
import gzip
import io
import json
import lzma
import os
import threading
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargen.training.data import read_corpus
from chargen.errors import CorpusError
from chargen.training.ingest import (ArrivingLines, EncodedCorpus, corpus_chunks, corpus_name, ingest, line_stats,
                                     source_stem, text_digest, text_lines)
from chargen.tokenizer import Vocab

TEXTS = st.text(alphabet=st.sampled_from(list("ab \n\r\té€😀\u0301\u0327\u1100\u1161\u11a8")), min_size=1, max_size=300).filter(
    lambda t: t.replace("\r\n", "\n").strip())


def _reference(paths):
    """The one-shot reading: whole files decoded and normalized (NFC) at once, as before chunking existed."""
    parts = []
    for p in paths:
        raw = open(p, "rb").read()
        text = unicodedata.normalize("NFC", raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8").replace("\r\n", "\n").replace("\r", "\n"))
        if parts and not parts[-1].endswith("\n"):
            parts[-1] += "\n"
        parts.append(text)
    return "".join(parts)


COMPRESS = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}


@given(texts=st.lists(TEXTS, min_size=1, max_size=3), chunk=st.integers(1, 17), bom=st.booleans(),
       compressed=st.lists(st.sampled_from([None, *COMPRESS]), min_size=3, max_size=3))
@settings(max_examples=150, deadline=None)
def test_chunked_encode_equals_one_shot(tmp_path_factory, texts, chunk, bom, compressed):
    d = tmp_path_factory.mktemp("chunks")
    paths, plain = [], []
    for i, (t, how) in enumerate(zip(texts, compressed)):  # (a compressed file is read as its text)
        raw = (b"\xef\xbb\xbf" if bom else b"") + t.encode("utf-8")
        (d / f"plain{i}.txt").write_bytes(raw)
        p = d / f"f{i}.txt"
        p.write_bytes(COMPRESS[how](raw) if how else raw)
        paths.append(str(p))
        plain.append(str(d / f"plain{i}.txt"))
    expected = _reference(plain)
    # Pieces cut at any byte join to the same text ...
    pieces = list(corpus_chunks(paths, chunk_bytes=chunk))
    assert b"".join(buf for buf, _ in pieces).decode("utf-8") == expected
    assert all(text is None or text.encode("utf-8") == buf for buf, text in pieces)
    # ... and the cache built from them holds the same ids, vocabulary, digest and line statistics.
    enc = ingest(paths, cache_dir=d / "cache", chunk_bytes=chunk)
    one_shot = EncodedCorpus.from_text(expected)
    assert enc.vocab == one_shot.vocab
    assert np.array_equal(np.asarray(enc.ids), one_shot.ids)
    assert enc.digest == one_shot.digest
    assert enc.line_stats.to_dict() == one_shot.line_stats.to_dict()
    assert enc.text() == expected


@given(text=TEXTS, bom=st.booleans(), cuts=st.lists(st.integers(1, 40), max_size=12), how=st.sampled_from([None, "gzip"]))
@settings(max_examples=120, deadline=None)
def test_lines_read_as_they_arrive_are_the_lines_of_the_whole(text, bom, cuts, how):
    """`chargen score` from a pipe (ArrivingLines: each read what has arrived) gives the lines a
    whole read gives (text_lines: BOM, CRLF, a last line without a newline), however the writer
    cut its writes: a CRLF, a character or a BOM split between two writes included."""
    import threading

    raw = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")
    raw = COMPRESS[how](raw) if how else raw
    expected = list(text_lines(["-"], io.BytesIO(raw), nfc=False))
    read_fd, write_fd = os.pipe()

    def write() -> None:  # in pieces of the drawn sizes, the rest at once
        at = 0
        for n in cuts:
            os.write(write_fd, raw[at: at + n])
            at += n
        os.write(write_fd, raw[at:])
        os.close(write_fd)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        lines = ArrivingLines(read_fd)
        got = []
        for line in lines:
            got.append(line)
            lines.waiting()  # (a predicate: asking changes nothing)
        assert got == expected
    finally:
        writer.join()
        os.close(read_fd)


def test_compressed_corpora_by_their_first_bytes_and_what_is_refused(tmp_path):
    """gzip, bzip2 and xz are read as their text whatever the name (stdin too); a damaged one, an
    archive or zstd is one CorpusError saying what it is (before, 'not valid UTF-8 ... iconv')."""
    text = "Anna\nMaria\n" * 50
    cases = {"a.txt.gz": gzip.compress, "b.bz2": bz2.compress, "c.xz": lzma.compress, "d.txt": gzip.compress}
    for name, how in cases.items():
        (tmp_path / name).write_bytes(how(text.encode()))
        assert b"".join(buf for buf, _ in corpus_chunks([str(tmp_path / name)], chunk_bytes=7)).decode() == text
    stdin = io.BytesIO(lzma.compress(text.encode()))
    assert b"".join(buf for buf, _ in corpus_chunks(["-"], stdin)).decode() == text
    (tmp_path / "cut.gz").write_bytes(gzip.compress(text.encode())[:-9])  # (its end-of-stream trailer cut)
    (tmp_path / "bad.xz").write_bytes(lzma.compress(text.encode())[:12] + b"\x00" * 30)
    (tmp_path / "a.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    (tmp_path / "a.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 40)
    for name, words in [("cut.gz", "cut.gz is gzip-compressed and cannot be decompressed"),
                        ("bad.xz", "bad.xz is xz-compressed and cannot be decompressed"),
                        ("a.zip", "a.zip is a zip archive: unpack it"), ("a.zst", "a.zst is zstd-compressed")]:
        with pytest.raises(CorpusError, match=words):
            list(corpus_chunks([str(tmp_path / name)]))
    # a checkpoint, an image, a document or a program passed as text: said what it is (before, "not
    # valid UTF-8 ... convert it, e.g. iconv -f latin1"), by name or on stdin
    from chargen.checkpoint import bundled_checkpoint

    not_text = {"best.safetensors": (bundled_checkpoint("names").read_bytes()[:4000], "is a safetensors file"),
                "a.png": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "is a PNG image"),
                "a.pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "is a PDF document"),
                "a.out": (b"\x7fELF\x02\x01\x01" + bytes(9), "is a program")}
    for name, (data, words) in not_text.items():
        (tmp_path / name).write_bytes(data)
        for paths, stdin in (([str(tmp_path / name)], None), (["-"], io.BytesIO(data))):
            with pytest.raises(CorpusError, match=words):
                list(corpus_chunks(paths, stdin, chunk_bytes=3))
    # text whose fifth to eighth bytes are NULs is no safetensors file without the JSON after them
    (tmp_path / "nul.txt").write_bytes(b"Anna" + bytes(4) + b"xx\n")
    with pytest.raises(CorpusError, match="holds a NUL character"):
        list(corpus_chunks([str(tmp_path / "nul.txt")]))
    # a compressed file's name without the compression: the run's directory, --labels file's label
    assert [source_stem(p) for p in ("it.txt.gz", "dir/el.xz", "fi.txt", "names.tar")] == ["it", "el", "fi", "names"]
    assert corpus_name([str(tmp_path / "a.txt.gz")]) == "a"


def test_the_characters_that_compose_with_the_one_before_are_unicodes():
    """The chunks are cut before a character that composes with nothing before it: derived here
    from unicodedata (canonical pairs whose second character has combining class 0, and Hangul's
    vowels and final consonants), they are the ones ingest names."""
    import sys

    from chargen.training.ingest import COMPOSE_BACKWARDS

    derived = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))
    for cp in range(sys.maxunicode + 1):
        parts = unicodedata.decomposition(chr(cp)).split()
        if len(parts) == 2 and not parts[0].startswith("<") and unicodedata.combining(chr(int(parts[1], 16))) == 0:
            derived.add(int(parts[1], 16))
    assert derived == COMPOSE_BACKWARDS


@given(text=st.text(alphabet=st.sampled_from(list("a\né€\u0301\u0327\u1100\u1161\u11a8\u0b47\u0b3e")), max_size=12))
@settings(max_examples=400, deadline=None)
def test_a_chunk_is_cut_where_normalizing_each_side_is_normalizing_the_whole(text):
    """A cut (before a character that composes with nothing before it and lets no mark past: ASCII,
    é, a Hangul initial, not its vowel or final, not a mark, not Oriya's length mark) is found
    whenever there is one, and normalizing the two sides alone gives the whole's NFC."""
    from chargen.training.ingest import _nfc_cut

    k = _nfc_cut(text.encode("utf-8"))
    left, right = text.encode("utf-8")[:k].decode("utf-8"), text.encode("utf-8")[k:].decode("utf-8")
    assert unicodedata.normalize("NFC", left) + unicodedata.normalize("NFC", right) == unicodedata.normalize("NFC", text)
    fresh = [i for i, ch in enumerate(text) if ch in "a\né€\u1100\u0b47" and i > 0]
    assert (k > 0) == bool(fresh) and (not fresh or k in {len(text[:i].encode("utf-8")) for i in fresh})


def test_a_decomposed_corpus_is_read_composed(tmp_path):
    """é written as e and a combining accent is the character é to training (the vocabulary, the
    ids, the lines kept for --novel), in chunks cut anywhere: the same model as from the NFC text."""
    composed = "José\nRenée\nZoë\n한국\n" * 50
    path = tmp_path / "nfd.txt"
    path.write_text(unicodedata.normalize("NFD", composed), encoding="utf-8")
    for chunk in (3, 64, 1 << 20):
        enc = ingest([str(path)], cache_dir=tmp_path / f"cache{chunk}", chunk_bytes=chunk)
        assert enc.text() == composed and "\u0301" not in enc.vocab and "é" in enc.vocab
    assert read_corpus([str(path)]).text == composed


def _reference_line_oriented(text):
    """The rule written out directly on the lines (what LineStats computes from a histogram)."""
    lines = text.split("\n")
    while lines and lines[-1] == "":  # empty lines at either end say nothing of paragraphs
        lines.pop()
    while lines and lines[0] == "":
        lines.pop(0)
    lengths = np.array([len(x) for x in lines])
    if (lengths > 0).sum() < 2 or (lengths == 0).sum() > max(1, int(0.05 * len(lines))):
        return False
    lengths = lengths[lengths > 0]
    return bool(np.median(lengths) <= 32 and np.percentile(lengths, 95, method="lower") <= 64)


@given(lengths=st.lists(st.integers(0, 200), min_size=0, max_size=80), trailing=st.booleans())
@settings(max_examples=300, deadline=None)
def test_line_statistics_match_the_rule(lengths, trailing):
    text = "\n".join("x" * n for n in lengths) + ("\n" if trailing else "")
    assert line_stats(text).line_oriented() == _reference_line_oriented(text)


@given(lengths=st.lists(st.integers(0, 3), min_size=0, max_size=40), cuts=st.lists(st.integers(0, 120), max_size=6))
@settings(max_examples=300, deadline=None)
def test_line_statistics_do_not_depend_on_the_chunks(lengths, cuts):
    """A large file's statistics come chunk by chunk (empty lines at its ends too): the same as at once."""
    from chargen.training.ingest import _LineCounter

    text = "\n".join("x" * n for n in lengths)
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    counter = _LineCounter()
    for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(cp)]):
        counter.add(cp[min(a, len(cp)):min(max(a, b), len(cp))])
    assert counter.finish().to_dict() == line_stats(text).to_dict()


def test_large_file_in_many_chunks_and_error_offsets(tmp_path):
    # A corpus of several chunks, non-ASCII characters across boundaries, encodes like a one-shot.
    text = "".join(f"línea {i} — ünïcode ✓ {'x' * (i % 50)}\r\n" for i in range(3000))
    p = tmp_path / "big.txt"
    p.write_bytes(text.encode("utf-8"))
    enc = ingest([str(p)], cache_dir=tmp_path / "cache", chunk_bytes=4096)
    assert os.path.getsize(p) > 20 * 4096
    assert enc.text() == text.replace("\r\n", "\n")
    assert enc.ids.dtype == np.uint8 and isinstance(enc.ids, np.memmap)
    # An invalid byte deep inside is reported at its file offset, whatever the chunk size.
    raw = p.read_bytes()
    bad = raw[:100_001] + b"\xff" + raw[100_001:]
    q = tmp_path / "bad.txt"
    q.write_bytes(bad)
    for chunk in (1000, 4096, 1 << 20):
        with pytest.raises(CorpusError, match="byte 100001"):
            ingest([str(q)], cache_dir=tmp_path / "cache", chunk_bytes=chunk)


def test_cache_is_reused_and_rebuilt_when_the_corpus_changes(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("hello world\n" * 100)
    cache = tmp_path / "cache"
    first = ingest([str(p)], cache_dir=cache)
    assert not first.reused and first.cache_file.exists()
    again = ingest([str(p)], cache_dir=cache)
    assert again.reused and again.cache_file == first.cache_file
    assert np.array_equal(np.asarray(again.ids), np.asarray(first.ids))
    # Same size, new content and time: rebuilt, with the new characters.
    p.write_text("HELLO WORLD\n" * 100)
    os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns + 10**9))
    changed = ingest([str(p)], cache_dir=cache)
    assert not changed.reused
    assert changed.text() == "HELLO WORLD\n" * 100
    assert changed.digest != first.digest
    # A half-written entry (ids file cut short) is not trusted: it is built again.
    changed.cache_file.write_bytes(b"\x00" * 10)
    repaired = ingest([str(p)], cache_dir=cache)
    assert not repaired.reused and repaired.text() == "HELLO WORLD\n" * 100


def test_stdin_is_spooled_and_keyed_by_content(tmp_path):
    cache = tmp_path / "cache"
    data = "Ana\nBob\nCy\n".encode() * 30
    a = ingest(["-"], cache_dir=cache, stdin=io.BytesIO(data))
    b = ingest(["-"], cache_dir=cache, stdin=io.BytesIO(data))
    assert a.sources == ["stdin"] and a.name == "stdin"
    assert b.reused and a.text() == data.decode()
    assert not list(cache.glob(".stdin.*"))  # the spool file is gone
    with pytest.raises(CorpusError, match="stdin is empty"):
        ingest(["-"], cache_dir=cache, stdin=io.BytesIO(b""))


def _pipe_path(data: bytes) -> tuple[str, threading.Thread]:
    """A pipe's path, as bash's <(...) gives one (/dev/fd/N), with a thread writing `data` into it."""
    r, w = os.pipe()

    def write():
        with os.fdopen(w, "wb") as out:
            out.write(data)

    writer = threading.Thread(target=write)
    writer.start()
    return f"/dev/fd/{r}", writer


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="no /dev/fd")
def test_a_pipe_or_fifo_corpus_is_read_once_and_keyed_by_content(tmp_path):
    """bash's `chargen train <(zcat a.gz)` names a pipe, which holds its text for one reading: it is
    spooled as stdin is (its two passes once read an empty second), and its key is its content,
    not a pipe's size and date, which say nothing of what it held."""
    cache = tmp_path / "cache"
    plain = tmp_path / "names.txt"
    data = "Ana\nBob\nCy\n".encode() * 3000  # several chunks, more than a pipe's buffer
    plain.write_bytes(data)
    path, writer = _pipe_path(data)
    try:
        a = ingest([path, str(plain)], cache_dir=cache, chunk_bytes=4096)
    finally:
        writer.join()
        os.close(int(path.rsplit("/", 1)[1]))
    assert a.text() == data.decode() * 2 and a.name == "pipe" and a.sources == [path, str(plain)]
    other, writer = _pipe_path(data.upper())
    try:
        b = ingest([other, str(plain)], cache_dir=cache, chunk_bytes=4096)  # a new pipe may reuse the inode
    finally:
        writer.join()
        os.close(int(other.rsplit("/", 1)[1]))
    assert not b.reused and b.text() == data.decode().upper() + data.decode()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(data,))
    writer.start()
    c = ingest([str(fifo)], cache_dir=cache, chunk_bytes=4096)
    writer.join()
    assert c.text() == data.decode() and c.name == "fifo"
    assert not list(cache.glob(".stdin.*"))  # the spool files are gone
    with pytest.raises(CorpusError, match="/dev/null is empty"):
        ingest(["/dev/null"], cache_dir=cache)


def test_a_list_with_old_mac_line_ends_is_a_list(tmp_path):
    """Excel for Mac's "CSV (Macintosh)" ends lines with a lone CR: read as one line of prose, its
    names were a 27-character alphabet's soup. In a corpus a lone CR ends a line, as CRLF does,
    wherever the chunks are cut."""
    names = [f"Name{i}" for i in range(300)]
    p = tmp_path / "mac.txt"
    p.write_bytes("\r".join(names).encode() + b"\r")
    for chunk in (7, 1 << 20):
        enc = ingest([str(p)], cache_dir=tmp_path / f"cache{chunk}", chunk_bytes=chunk)
        assert enc.text() == "\n".join(names) + "\n" and enc.line_stats.line_oriented()
        assert "\r" not in enc.vocab
    # A filter's lines end at LF alone, as wc's and paste's do: score gives one line for each of theirs.
    assert list(text_lines([str(p)])) == ["\r".join(names) + "\r"]


def test_smallest_dtype_for_large_vocabularies(tmp_path):
    chars = "".join(chr(0x4E00 + i) for i in range(300))  # 300 CJK characters: more than a byte
    p = tmp_path / "cjk.txt"
    p.write_text(chars * 3 + "\n")
    enc = ingest([str(p)], cache_dir=tmp_path / "cache")
    assert enc.ids.dtype == np.uint16 and len(enc.vocab) == 301
    assert enc.text() == chars * 3 + "\n"
    assert enc.vocab == Vocab.from_text(read_corpus([str(p)]).text)


def test_a_cache_that_cannot_be_written_is_one_clear_error_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno

    from chargen.errors import UsageError

    p = tmp_path / "c.txt"
    p.write_text("hello world\n" * 100)
    cache = tmp_path / "cache"

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("chargen.files.os.replace", full)
    with pytest.raises(UsageError, match=r"corpus cache .*No space left on device.*CHARGEN_CACHE_DIR"):
        ingest([str(p)], cache_dir=cache)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []  # no entry, no temp file


_INGEST = ("import sys; from pathlib import Path; from chargen.training.ingest import ingest; "
           "c = ingest([sys.argv[1]], cache_dir=Path(sys.argv[2])); print(c.digest, c.n_chars, c.reused)")


def _big_corpus(path, mb: int) -> str:
    line = "".join(chr(97 + (i * 7) % 26) for i in range(79)) + "\n"
    text = line * (mb * (1 << 20) // 80)
    path.write_text(text)
    return text


def test_two_processes_ingesting_the_same_corpus_end_with_one_valid_entry(tmp_path):
    import subprocess
    import sys

    text = _big_corpus(tmp_path / "big.txt", 24)
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", _INGEST, str(tmp_path / "big.txt"), str(cache)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1].decode()[-2000:] for o in outs]
    results = [o[0].decode().split() for o in outs]
    assert results[0][:2] == results[1][:2] == [text_digest(text), str(len(text))]
    assert sorted(r[2] for r in results) == ["False", "True"]  # one encoded it, the other waited and reused it
    assert len(list(cache.glob("*.json"))) == 1 and len(list(cache.glob("*.ids"))) == 1
    assert not list(cache.glob("*.tmp")) and not list(cache.glob(".*.tmp"))


def test_a_process_killed_mid_ingest_leaves_nothing_taken_for_an_entry(tmp_path):
    import random
    import signal
    import subprocess
    import sys
    import time

    text = _big_corpus(tmp_path / "big.txt", 24)
    cache = tmp_path / "cache"
    rng = random.Random(0)
    for trial in range(4):
        p = subprocess.Popen([sys.executable, "-c", _INGEST, str(tmp_path / "big.txt"), str(cache)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.3, 1.2))  # import, pass 1, pass 2: somewhere in there
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        for meta in cache.glob("*.json"):  # whatever is left as an entry is whole
            ids = meta.with_suffix(".ids")
            assert ids.stat().st_size == json.loads(meta.read_text())["n_chars"], trial
        for entry in list(cache.glob("*.json")) + list(cache.glob("*.ids")):
            entry.unlink()  # start the next trial from nothing again
    enc = ingest([str(tmp_path / "big.txt")], cache_dir=cache)
    assert enc.n_chars == len(text) and enc.vocab.decode_ids(enc.ids[:160]) == text[:160]


def test_a_run_on_decomposed_text_is_told_why_it_cannot_resume(tmp_path):
    """A run trained before corpora were read in NFC has the accents as characters of their own:
    its corpus now reads as other text, and the error says why (a run on NFC text resumes as before)."""
    from types import SimpleNamespace

    from chargen.errors import UsageError
    from chargen.training.loop import _check_same_corpus

    run = SimpleNamespace(resume={"corpus_digest": "before"}, vocab=Vocab.from_text("Jose\u0301\n"),
                          path=tmp_path / "last.safetensors")
    now = SimpleNamespace(digest="after", vocab=Vocab.from_text("Jos\u00e9\n"))
    with pytest.raises(UsageError, match="before corpora were read in NFC: start it again"):
        _check_same_corpus(run, now)
    with pytest.raises(UsageError, match="same corpus files$"):  # other text: no such hint
        _check_same_corpus(SimpleNamespace(**{**vars(run), "vocab": now.vocab}), now)
