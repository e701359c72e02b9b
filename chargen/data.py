r"""Corpora: read and check them, split train/validation, lay the text out into TBPTT streams.

How the training text becomes batches (batch_size B = 4 streams, seq_len T = 3 here):

    text:   a b c d e f g h i j k l m n o p q r s t u v w x y z ...
            \_____________/\______________/\______________/\___ ...
                stream 0        stream 1        stream 2     stream 3

    stream 0: a b c | d e f | g h ...      step 0 takes columns [0, T) of every stream,
    stream 1: h i j | k l m | n o ...      step 1 takes [T, 2T), and so on. Targets are
    stream 2: o p q | r s t | u v ...      the same windows shifted one character right.
    stream 3: v w x | y z . | . . ...
              step 0  step 1

Each row is a contiguous slice of the corpus, so the hidden state left by a window of row i is
exactly the state the next window of row i needs: the trainer carries it over (detached).
Characters past B * L (L = len // B) are dropped; that is fewer than B characters.
"""

from __future__ import annotations

import io
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

import numpy as np

from .errors import CorpusError
from .ingest import corpus_chunks, corpus_name, describe_source, line_stats, text_chunks


@dataclass
class Corpus:
    """A corpus held as one string: for small texts, tests and `chargen eval`. Training on
    files goes through `ingest`, which never holds the whole text."""

    text: str
    name: str  # for the default run directory and `info`
    sources: list[str]


def _join(pieces: Iterator[tuple[bytes, Optional[str]]]) -> str:
    return "".join(text if text is not None else buf.decode("ascii") for buf, text in pieces)


def decode_corpus_bytes(raw: bytes, source: str) -> str:
    """bytes -> text: BOM dropped, CRLF -> LF; a one-line error for anything that is not UTF-8 text."""
    return _join(text_chunks(io.BytesIO(raw), source))


def read_corpus(paths: list[str], stdin: Optional[BinaryIO] = None) -> Corpus:
    """Read one or more UTF-8 files ('-' is stdin) into one text; files are joined by newlines."""
    text = _join(corpus_chunks(paths, stdin))
    return Corpus(text=text, name=corpus_name(paths), sources=[describe_source(p) for p in paths])


def split_train_val(text: str, val_fraction: float) -> tuple[str, str]:
    """The last `val_fraction` of the text is validation, starting at a line start where one is near."""
    cut = len(text) - max(1, int(len(text) * val_fraction))
    newline = text.find("\n", cut, min(len(text) - 1, cut + 1000))
    if newline >= 0:
        cut = newline + 1
    return text[:cut], text[cut:]


def is_line_oriented(text: str) -> bool:
    """A corpus of short, non-empty lines (names, band names, titles), as opposed to prose or code.

    Samples from such a model are one line each. (The rule: `ingest.LineStats.line_oriented`.)
    """
    return line_stats(text).line_oriented()


def shuffle_lines(text: str, seed: int) -> str:
    """The same lines in a seeded random order.

    Lists (names, titles) are often sorted; order carries no meaning in them, but a model
    trained on a sorted list learns to copy the previous line's prefix, which it never has when
    it samples one line from scratch, and a validation tail of a sorted list is one letter's
    worth of lines. Shuffled, the tail is a fair random sample.
    """
    import random

    lines = text.split("\n")
    trailing = lines[-1] == ""
    if trailing:
        lines.pop()
    random.Random(seed).shuffle(lines)
    return "\n".join(lines) + ("\n" if trailing else "")


def line_ids(vocab, text: str) -> list[np.ndarray]:
    """The non-empty lines of `text` as id arrays, each followed by the newline id."""
    newline = vocab.index["\n"]
    return [np.append(vocab.encode(line, skip_unknown=True).astype(np.int64), newline)
            for line in text.split("\n") if line]


def unique_lines(text: str) -> list[str]:
    return sorted({line for line in text.split("\n") if line})


def unigram_entropy(ids: np.ndarray, vocab_size: int) -> float:
    """Entropy of the character frequencies in nats: the loss of a model that ignores context."""
    counts = np.bincount(ids.astype(np.int64), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# --- TBPTT layout ---------------------------------------------------------------------------


def stream_view(ids: np.ndarray, batch_size: int) -> np.ndarray:
    """(N,) -> (batch_size, N // batch_size): row i is the i-th contiguous slice of the text.

    A view, not a copy: a memory-mapped file stays one."""
    length = len(ids) // batch_size
    return ids[: batch_size * length].reshape(batch_size, length)


STREAM_CHUNK = 1 << 16  # characters read ahead per stream: 4 MB of buffer for 64 streams of uint8


def _read_into(f: BinaryIO, out: np.ndarray, start: int, path: Path) -> np.ndarray:
    """Fill the contiguous array `out` with the ids file's elements from index `start` on."""
    view = memoryview(out).cast("B")
    f.seek(start * out.dtype.itemsize)
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise CorpusError(f"the corpus cache {path} was cut short while training; run again to rebuild it")
        done += n
    return out


def read_ids(path: Path, dtype: np.dtype, start: int, stop: int) -> np.ndarray:
    """ids[start:stop] of an ids file, copied with ordinary reads (see FileStreams for why)."""
    with open(path, "rb", buffering=0) as f:
        return _read_into(f, np.empty(max(0, stop - start), dtype), start, Path(path))


class FileStreams:
    """stream_view's (B, L) layout over an ids file, for corpora larger than memory.

    Why not slice the memory map: on a page fault the kernel reads ahead and maps whole blocks
    (megabytes, with large folios) around the page touched, and they stay mapped. With 64
    streams across a 1 GiB file that is ~130 MB of the process's resident memory at the first
    step, and the whole file after an epoch. Reading copies only the characters asked for; the
    page cache behind it is the kernel's, not the process's. Each stream is read `chunk`
    characters at a time, so most steps make no system call at all.
    """

    def __init__(self, path: Path, dtype: np.dtype, batch_size: int, length: int, rows: slice = slice(None),
                 chunk: Optional[int] = None):
        self.path, self.dtype, self.length = Path(path), np.dtype(dtype), length
        self.chunk = chunk or STREAM_CHUNK
        self.rows = range(batch_size)[rows]
        self._file = open(self.path, "rb", buffering=0)
        self._close = weakref.finalize(self, self._file.close)
        self._buf = np.empty((len(self.rows), 0), self.dtype)
        self._lo = self._hi = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), self.length)

    def row(self, i: int) -> np.ndarray:
        """All of stream i (of this reader's rows)."""
        return _read_into(self._file, np.empty(self.length, self.dtype), self.rows[i] * self.length, self.path)

    def block(self, start: int, width: int) -> np.ndarray:
        """Columns [start, start + width) of every stream: (B, width), like streams[:, start:start + width]."""
        stop = min(start + width, self.length)
        if not (self._lo <= start and stop <= self._hi):
            hi = min(self.length, start + max(width, self.chunk))
            buf = np.empty((len(self.rows), hi - start), self.dtype)
            for i, r in enumerate(self.rows):
                _read_into(self._file, buf[i], r * self.length + start, self.path)
            self._buf, self._lo, self._hi = buf, start, hi
        return self._buf[:, start - self._lo : stop - self._lo]

    def close(self) -> None:
        self._close()


def windows_per_epoch(streams: np.ndarray, seq_len: int) -> int:
    """How many (input, target) windows fit; each needs seq_len + 1 characters of its stream."""
    return max(0, (streams.shape[1] - 1) // seq_len)


def window(streams: np.ndarray, k: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The k-th window of every stream: inputs (B, T) and targets (B, T), shifted by one."""
    start = k * seq_len
    return streams[:, start : start + seq_len], streams[:, start + 1 : start + seq_len + 1]


def iter_windows(streams: np.ndarray, seq_len: int, start: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    for k in range(start, windows_per_epoch(streams, seq_len)):
        x, y = window(streams, k, seq_len)
        yield k, x, y


def check_trainable(n_train: int, seq_len: int, batch_size: int, source: str) -> int:
    """The batch size to use: as asked, or fewer streams if the corpus is too short for that many.

    A corpus that cannot fill even one window of seq_len + 1 characters is an error.
    """
    if n_train < seq_len + 1:
        raise CorpusError(
            f"{source} is too short: its training part has {n_train} characters, but one window needs "
            f"--seq-len + 1 = {seq_len + 1}; use a longer corpus or a smaller --seq-len"
        )
    return min(batch_size, n_train // (seq_len + 1))
