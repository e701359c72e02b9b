r"""Streaming ingest: corpus files -> vocabulary + an encoded, memory-mapped cache of ids.

A corpus may be larger than memory, so it is never held as one string. Two passes over the
files, a chunk (16 MB) at a time:

    files ──read──> chunks of bytes ──check──> UTF-8 text, BOM dropped, CRLF, CR -> LF, in NFC
    (gzip, bzip2 and xz files decompressed as they are read)
       pass 1: which characters occur (-> Vocab), line-length statistics, SHA-256 of the text
       pass 2: characters -> ids (a lookup table), appended to  <cache>/<key>.ids
                                                                <cache>/<key>.json  (vocab, stats)

The ids file holds one id per character in the smallest unsigned type that fits the vocabulary
(uint8 for up to 256 characters) and is memory-mapped for training, so the operating system
pages it in as the streams advance. It is reused while every source file keeps its path, size
and modification time (as make and rsync judge "unchanged"), and rebuilt when one changes.
Standard input is spooled to a file first and keyed by its content.

The cache lives in $CHARGEN_CACHE_DIR, else $XDG_CACHE_HOME/chargen, else ~/.cache/chargen;
the least recently used entries beyond MAX_ENTRIES are removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import sys
import tempfile
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator, Optional

import numpy as np

from ..errors import CheckpointError, CorpusError, UsageError, VocabularyError, WriteError, cannot_read
from ..files import atomic_write, atomic_writer, stamp
from ..tokenizer import Vocab

if TYPE_CHECKING:
    from .labels import LineLabels

CHUNK_BYTES = 16 << 20
CACHE_FORMAT = 4  # what an entry holds (2: its line statistics count the empty lines at either end; 3: NFC;
# 4: a lone CR ends a line)
MAX_ENTRIES = 16
BOM = b"\xef\xbb\xbf"
NON_ASCII = bytes(range(0x80, 0x100))
# The characters of canonical combining class 0 that compose with the character before them
# (the second of a canonical pair: vowel signs of Indic scripts, Hangul's vowels and final
# consonants); tests/test_ingest.py derives them from unicodedata.
COMPOSE_BACKWARDS = frozenset([
    0x09BE, 0x09D7, 0x0B3E, 0x0B56, 0x0B57, 0x0BBE, 0x0BD7, 0x0CC2, 0x0CD5, 0x0CD6, 0x0D3E, 0x0D57, 0x0DCF, 0x0DDF,
    0x0FB5, 0x0FB7, 0x102E, 0x1B35, 0x11127, 0x1133E, 0x11357, 0x114B0, 0x114BA, 0x114BD, 0x115AF, 0x11930,
    *range(0x1161, 0x1176), *range(0x11A8, 0x11C3)])
NFC_CARRY = 1 << 20  # text carried past a chunk while it holds no place to cut (combining marks only)
MAX_CODEPOINT = 0x110000
# Line lengths are histogrammed up to this; longer lines share the last bucket. The
# line-orientation rule only asks whether the median is <= 32 and the 95th percentile <= 64.
LONG_LINE = 65


# --- reading and checking, a chunk at a time -----------------------------------------------------


def describe_source(path: str) -> str:
    """A corpus path as messages, the checkpoint and a run's name show it: "stdin" for -, and a
    file name's bytes that are not UTF-8 (Python holds them as surrogates, which no text file, web
    page or JSON reader takes) as U+FFFD."""
    return "stdin" if path == "-" else path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# Where a shell's pipes have their paths: a number that names no corpus.
NAMELESS_PREFIXES = ("/dev/fd/", "/proc/self/fd/", "/dev/stdin")


def is_stream(path: str) -> bool:
    """Whether a corpus path can be read only once: stdin, or a pipe, FIFO or device (bash's
    <(...) is /dev/fd/63, a pipe) rather than a regular file; a pipe by its name where this
    process has no such descriptor (a resumed run's source)."""
    if path == "-" or path.startswith(NAMELESS_PREFIXES):
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False  # (opening it says what is wrong)


# Compressed text is read as the text (known by its first bytes, whatever the file's name): large
# corpora ship so, and Python reads these three itself. An archive holds files, not one text.
COMPRESSIONS = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))
ARCHIVES = ((b"PK\x03\x04", "is a zip archive: unpack it and pass its text files"),
            (b"7z\xbc\xaf\x27\x1c", "is a 7-Zip archive: unpack it and pass its text files"),
            (b"\x28\xb5\x2f\xfd", "is zstd-compressed, which chargen does not read: decompress it (zstd -d), or pipe it "
                                  "(zstd -dc FILE | chargen ... -)"))
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")
# Files a corpus is not, said by name when one is passed by mistake (an image, a document: not
# "convert it from latin1"); a safetensors file by its header's shape (a length, then JSON).
NOT_TEXT = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF87a", "a GIF image"),
            (b"GIF89a", "a GIF image"), (b"%PDF-", "a PDF document"), (b"\x7fELF", "a program (ELF)"))


def _undecided(head: bytes) -> bool:
    """Whether a file's first bytes can still begin a byte-order mark or what _not_text names (a
    safetensors file's first ten bytes hold a NUL, and text never does: its first line is never held
    back for more)."""
    return (len(head) < 3 and any(mark.startswith(head) for mark in (BOM, b"\xff\xfe", b"\xfe\xff"))
            or len(head) < 10 and b"\x00" in head
            or any(magic.startswith(head) and magic != head for magic, _ in NOT_TEXT))


def _not_text(head: bytes) -> str:
    """What a file starting with `head` is when it is plainly not text, or ""."""
    if len(head) >= 10 and head[4:8] == bytes(4) and head[8:10] == b'{"':  # (a header's length under 4 GB)
        return ("is a safetensors file (a checkpoint?), not text; a checkpoint goes where one is asked for "
                "(train --from, sample -c)")
    return next((f"is {what}, not text" for magic, what in NOT_TEXT if head.startswith(magic)), "")


def source_stem(path: str) -> str:
    """A source's name without its extension, and without a compression's first (names.txt.gz: names);
    "" for stdin and for a pipe named by its file descriptor (bash's <(...) is /dev/fd/63)."""
    if path == "-" or path.startswith(NAMELESS_PREFIXES):
        return ""
    p = Path(path)
    return Path(p.stem).stem if p.suffix in COMPRESSED_SUFFIXES else p.stem


class _Rejoined:
    """A stream whose first bytes were read to tell what it holds, given back before the rest."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        head, self.head = self.head, b""
        if not head:
            return self.stream.read(n)
        if 0 <= n < len(head):
            self.head = head[n:]
            return head[:n]
        return head if n >= 0 else head + self.stream.read()  # (a short read: a pipe's first line is not held back)


class _Decompressed:
    """The text of a compressed stream; damaged data is a one-line CorpusError, not a traceback."""

    def __init__(self, stream: BinaryIO, kind: str, source: str):
        import bz2  # (here, not at start-up: a command that reads no corpus never loads them)
        import gzip
        import lzma
        import zlib

        opener = {"gzip": lambda f: gzip.GzipFile(fileobj=f, mode="rb"), "bzip2": bz2.BZ2File, "xz": lzma.LZMAFile}
        self.kind, self.source, self.stream = kind, source, opener[kind](stream)
        self.damaged = (EOFError, OSError, ValueError, zlib.error, lzma.LZMAError)  # (what each raises for bad data)

    def read(self, n: int = -1) -> bytes:
        try:
            return self.stream.read(n)
        except self.damaged as exc:
            raise CorpusError(f"{self.source} is {self.kind}-compressed and cannot be decompressed ({exc})") from None


def _decompressed(stream: BinaryIO, source: str) -> BinaryIO:
    """`stream`'s text: decompressed where its first bytes say gzip, bzip2 or xz; an archive refused."""
    head = b""
    while len(head) < 6 and any(magic.startswith(head) for magic, _ in ARCHIVES + COMPRESSIONS):
        try:
            block = stream.read(6 - len(head))
        except (OSError, ValueError) as exc:
            raise CorpusError(f"cannot read {source} ({exc})") from None
        if not block:
            break
        head += block
    for magic, what in ARCHIVES:
        if head.startswith(magic):
            raise CorpusError(f"{source} {what}")
    rejoined = _Rejoined(head, stream)
    for magic, kind in COMPRESSIONS:
        if head.startswith(magic):
            return _Decompressed(rejoined, kind, source)  # type: ignore[return-value]
    return rejoined  # type: ignore[return-value]


def open_source(path: str, stdin: Optional[BinaryIO] = None) -> BinaryIO:
    """A binary stream for a corpus path ('-' is stdin), or a one-line CorpusError."""
    if path == "-":
        stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
        if stream is None or getattr(stream, "closed", False):
            raise CorpusError("stdin is closed; name a file instead of -")
        if getattr(stream, "isatty", lambda: False)():  # typed: all of it, so one Ctrl-D ends it (a read of
            return io.BytesIO(stream.read())  # a chunk stops at Ctrl-D, and the next would wait for another)
        return stream
    if not path:  # (Path("") is the current directory)
        raise CorpusError("a corpus path is empty: name a text file, or - for stdin")
    p = Path(path)
    if p.is_dir():
        raise CorpusError(f"{path} is a directory; pass the text files inside it")
    try:
        return open(p, "rb")
    except FileNotFoundError:
        raise CorpusError(f"{path} does not exist") from None
    except OSError as exc:
        raise CorpusError(cannot_read(path, exc)) from None


def _split_incomplete(buf: bytes) -> tuple[bytes, bytes]:
    """Split off a UTF-8 sequence cut short at the end of a chunk, to be completed by the next."""
    n = len(buf)
    for back in range(1, min(4, n) + 1):
        b = buf[n - back]
        if b < 0x80:
            return buf, b""
        if b >= 0xC0:  # a lead byte: how long is its sequence?
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return (buf[: n - back], buf[n - back :]) if need > back else (buf, b"")
    return buf, b""  # only continuation bytes: invalid, the decoder will say so


def _starts_fresh(ch: str) -> bool:
    """Normalizing text cut before `ch` gives the whole text's normalization: nothing in its
    decomposition moves before it or composes with what is before it."""
    first = unicodedata.normalize("NFD", ch)[0]
    return unicodedata.combining(first) == 0 and ord(first) not in COMPOSE_BACKWARDS


def _nfc_cut(buf: bytes) -> int:
    """The last byte offset above 0 of `buf` (whole UTF-8 characters) before a character that
    starts fresh (an ASCII one first: found in C), or 0 where there is none."""
    k = len(buf.rstrip(NON_ASCII)) - 1
    if k > 0:
        return k
    try:
        text = buf.decode("utf-8")
    except UnicodeDecodeError:
        return 0  # (the decode that follows says where)
    i = next((i for i in range(len(text) - 1, 0, -1) if _starts_fresh(text[i])), 0)
    return len(text[:i].encode("utf-8"))


def text_chunks(stream: BinaryIO, source: str, chunk_bytes: int = CHUNK_BYTES, nfc: bool = True,
                empty_ok: bool = False, lone_cr: bool = True) -> Iterator[tuple[bytes, Optional[str]]]:
    """The checked text of `stream` in pieces: (UTF-8 bytes, the same as str, or None when ASCII).

    BOM dropped, CRLF -> LF (with `lone_cr` a lone CR too: a corpus's text, not a filter's lines),
    and with `nfc` Unicode's composed form (NFC: é as one character, never e and a combining
    accent, so that text Unicode calls the same is one string to the model:
    chargen.tokenizer.Vocab.conform); a one-line CorpusError for anything that is not UTF-8
    text (with the byte offset), a NUL byte, an empty or whitespace-only file (unless `empty_ok`:
    lines to score, where no lines is an answer, none). A multi-byte
    character, a CRLF and (with `nfc`) the text from the last character that composes with nothing
    before it on (_nfc_cut) are carried into the next piece, so the pieces join to exactly the
    text a one-shot decode and normalization give. (Only a megabyte of combining marks with no
    other character among them is normalized as it is cut.)
    """
    stream = _decompressed(stream, source)
    offset = 0  # file offset of buf[0] (in the text, where the file is compressed)
    carry = b""
    first, nonspace, total = True, False, 0
    while True:
        block = _read_block(stream, chunk_bytes, source)
        eof = not block
        buf, carry = (carry + block if carry else block), b""
        if first:
            if not eof and _undecided(buf):
                carry = buf  # (maybe a byte-order mark's first bytes: a line "A" from a pipe need not wait)
                continue
            buf, offset = _opening(buf, source)
            first = False
        if not eof:
            buf, carry = _held_back(buf, nfc, chunk_bytes)
        if buf:
            consumed = len(buf)
            buf, text = _checked_text(buf, offset, source, nfc, lone_cr)
            nonspace = nonspace or bool((text if text is not None else buf.decode("ascii")).strip())
            offset += consumed
            total += len(buf)
            yield buf, text
        if eof:
            break
    if empty_ok:
        return
    if total == 0:
        raise CorpusError(f"{source} is empty")
    if not nonspace:
        raise CorpusError(f"{source} holds only whitespace")


def _read_block(stream: BinaryIO, size: int, source: str) -> bytes:
    try:
        return stream.read(size)
    except (OSError, ValueError) as exc:
        raise CorpusError(f"cannot read {source} ({exc})") from None


def _opening(buf: bytes, source: str) -> tuple[bytes, int]:
    """A file's first bytes checked (UTF-16, binary), without a UTF-8 byte-order mark; and the
    file offset where they now begin."""
    if buf.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CorpusError(f"{source} looks like UTF-16 (it starts with a UTF-16 byte-order mark); "
                          f"convert it to UTF-8, e.g. iconv -f utf-16 -t utf-8")
    offset = 0
    if buf.startswith(BOM):
        buf, offset = buf[len(BOM):], len(BOM)
    if what := _not_text(buf):  # (its first read holds what _decompressed peeked at)
        raise CorpusError(f"{source} {what}")
    return buf, offset


def _held_back(buf: bytes, nfc: bool, chunk_bytes: int) -> tuple[bytes, bytes]:
    """(what of `buf` is ready, what waits for the next read): a character's first bytes, with
    `nfc` the text from the last character that composes with nothing before it on, and a CR that
    may be half of a CRLF."""
    buf, carry = _split_incomplete(buf)
    if nfc:
        k = _nfc_cut(buf)
        if k or len(buf) <= chunk_bytes + NFC_CARRY:
            buf, carry = buf[:k], buf[k:] + carry
    if buf.endswith(b"\r"):
        buf, carry = buf[:-1], b"\r" + carry
    return buf, carry


def _checked_text(buf: bytes, offset: int, source: str, nfc: bool, lone_cr: bool) -> tuple[bytes, Optional[str]]:
    """A piece of a file (starting at byte `offset`) as text: (UTF-8 bytes, the same as str or None
    when ASCII), line ends as LF, with `nfc` composed; a CorpusError for bytes that are not UTF-8
    or for a NUL, whichever comes first in the file (wherever chunks end)."""
    text = None
    nul = buf.find(b"\x00")
    if not buf.isascii():
        try:
            text = buf.decode("utf-8")
        except UnicodeDecodeError as exc:
            if not 0 <= nul < exc.start:
                raise CorpusError(
                    f"{source} is not valid UTF-8 (byte {offset + exc.start}: "
                    f"{buf[exc.start:exc.start + 1]!r}); convert it, e.g. iconv -f latin1 -t utf-8"
                ) from None
    if nul >= 0:
        raise CorpusError(f"{source} holds a NUL character (at byte {offset + nul}); "
                          f"it looks like a binary file, not text")
    if b"\r" in buf:  # CRLF, and a lone CR (old Mac files, Excel's "CSV (Macintosh)"), end a line
        cr = "\r" if lone_cr else "\r\n"
        buf = buf.replace(b"\r\n", b"\n").replace(cr.encode(), b"\n")
        text = text.replace("\r\n", "\n").replace(cr, "\n") if text is not None else None
    if nfc and text is not None and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
        buf = text.encode("utf-8")
    return buf, text


def corpus_chunks(paths: list[str], stdin: Optional[BinaryIO] = None, chunk_bytes: int = CHUNK_BYTES,
                  names: Optional[list[str]] = None, nfc: bool = True, empty_ok: bool = False,
                  lone_cr: bool = True) -> Iterator[tuple[bytes, Optional[str]]]:
    """The text of several sources in pieces (text_chunks), joined by a newline where one does not
    end in one. `names` are what errors call the sources (default: the paths)."""
    check_paths(paths)
    ends_in_newline = True
    for i, path in enumerate(paths):
        stream = open_source(path, stdin)
        try:
            if not ends_in_newline:
                yield b"\n", None
            name = names[i] if names is not None else describe_source(path)
            for buf, text in text_chunks(stream, name, chunk_bytes, nfc, empty_ok, lone_cr):
                ends_in_newline = buf.endswith(b"\n")
                yield buf, text
        finally:
            if path != "-":
                stream.close()


def text_lines(paths: list[str], stdin: Optional[BinaryIO] = None, nfc: bool = True) -> Iterator[str]:
    """The lines of text files ('-' is stdin), as they are read: checked and read as corpora are
    (text_chunks: compressed files as their text, CRLF as LF), but a line ends at LF alone, as
    for wc, paste and sort (a lone CR is in its line: `score` gives a line for each of theirs);
    an empty input has none."""
    rest = ""
    for buf, text in corpus_chunks(paths, stdin, nfc=nfc, empty_ok=True, lone_cr=False):
        lines, rest = _split_lines(rest, buf, text)
        yield from lines
    if rest:
        yield rest


def _split_lines(rest: str, buf: bytes, text: Optional[str]) -> tuple[list[str], str]:
    """The lines a chunk (text_chunks': bytes, and their str unless ASCII) completes after `rest`,
    the start of a line carried from before, and the start of a line it leaves."""
    parts = (rest + (text if text is not None else buf.decode("ascii"))).split("\n")
    rest = parts.pop()
    return [p[:-1] if p.endswith("\r") else p for p in parts], rest


class ArrivingLines:
    """The lines of a pipe (or a terminal) as its writer sends them, where text_lines reads a chunk
    of 16 MB before its first line: each read takes what has arrived, and `waiting()` says that
    every line which has is given, so a reader scoring `tail -f log` in batches cuts a batch there
    (`batches`) and answers at once. Checked as text_lines checks (text_chunks; compressed text too, though
    that arrives in the decompressor's pieces)."""

    READ = 1 << 16  # bytes a read asks for at most (a pipe's buffer)

    def __init__(self, fd: int, source: str = "stdin"):
        self.fd = fd
        self.chunks = text_chunks(self, source, self.READ, nfc=False, empty_ok=True, lone_cr=False)
        self.held: list[str] = []  # lines arrived and not given, the last first
        self.rest = ""  # the start of a line whose newline has not arrived

    def read(self, n: int = -1) -> bytes:  # (text_chunks reads this: what has arrived, up to n bytes)
        try:
            return os.read(self.fd, min(n, self.READ) if n >= 0 else self.READ)
        except OSError as exc:
            raise CorpusError(f"cannot read stdin ({exc})") from None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while not self.held:
            chunk = next(self.chunks, None)
            if chunk is None:
                if not self.rest:
                    raise StopIteration
                self.held, self.rest = [self.rest], ""
                break
            lines, self.rest = _split_lines(self.rest, *chunk)
            self.held = lines[::-1]
        return self.held.pop()

    def batches(self, most: Optional[int] = None) -> Iterator[list[str]]:
        """The lines in batches cut where those that have arrived end (or at `most` lines)."""
        batch: list[str] = []
        for line in self:
            batch.append(line)
            if len(batch) == most or self.waiting():
                yield batch
                batch = []
        if batch:
            yield batch

    def waiting(self) -> bool:
        """Every line that has arrived is given: the next would wait for the writer."""
        import select

        if self.held:
            return False
        try:
            return not select.select([self.fd], [], [], 0)[0]
        except (OSError, ValueError):  # (a platform whose select takes sockets only: batches as read)
            return False


def check_paths(paths: list[str]) -> None:
    if not paths:
        raise UsageError("no corpus given; pass one or more text files, or - for stdin")
    if paths.count("-") > 1:
        raise UsageError("stdin (-) can be given only once")


def codepoints(buf: bytes, text: Optional[str]) -> np.ndarray:
    """(n,) code points of a chunk: the bytes themselves when ASCII (uint8), else uint32."""
    if text is None:
        return np.frombuffer(buf, dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


# --- line statistics: is this a list of names or prose? -------------------------------------------


@dataclass
class LineStats:
    """Counts to decide line-orientation without holding the text: lines, and the
    histogram of non-empty line lengths (the last bucket is "LONG_LINE or longer")."""

    count: int = 0  # lines
    nonempty: int = 0  # a list's lines (chargen.training.data.list_lines)
    hist: np.ndarray = field(default_factory=lambda: np.zeros(LONG_LINE + 1, dtype=np.int64))
    leading: int = 0  # empty lines before the first non-empty one
    trailing: int = 0  # empty lines after the last non-empty one (so far)

    def add_lengths(self, lengths: np.ndarray) -> None:
        """The next lines' lengths (0: an empty line), in order."""
        filled_at = np.flatnonzero(lengths > 0)
        if not filled_at.size:
            if self.nonempty:
                self.trailing += len(lengths)
            else:
                self.leading += len(lengths)
        else:
            if not self.nonempty:
                self.leading += int(filled_at[0])
            self.trailing = len(lengths) - 1 - int(filled_at[-1])
        self.count += len(lengths)
        filled = lengths[filled_at]
        self.nonempty += len(filled)
        self.hist += np.bincount(np.minimum(filled, LONG_LINE), minlength=LONG_LINE + 1)

    def _order_stat(self, k: int) -> int:
        return int(np.searchsorted(np.cumsum(self.hist), k, side="right"))

    def _median(self) -> float:
        """np.median(lengths) from the histogram (exact: a capped length is above 32 either way)."""
        a, b = self._order_stat((self.nonempty - 1) // 2), self._order_stat(self.nonempty // 2)
        return (a + b) / 2

    def _percentile_lower(self, q: float) -> int:
        """np.percentile(lengths, q, method="lower"): exact from the histogram up to LONG_LINE
        (an interpolated percentile would need the lengths the last bucket caps)."""
        return self._order_stat(int(q / 100 * (self.nonempty - 1)))

    def line_oriented(self) -> bool:
        """A corpus of short, non-empty lines (names, band names, titles), not prose or code:
        at least two non-empty lines, and at most one empty line or 5% of them (prose and code
        have blank lines between paragraphs and blocks, 10-20% of their lines; one stray blank
        line in a list of five names is not a paragraph; empty lines before the first line and
        after the last say nothing of that, and are not counted: a short list often ends with
        one), median length <= 32 and 95th percentile (the lower rank) <= 64. (A few short lines are too short to train on as
        running text anyway: one window needs --seq-len + 1 characters; as a list they adapt a
        trained model.)"""
        inner = self.count - self.leading - self.trailing
        if self.nonempty < 2 or inner - self.nonempty > max(1, int(0.05 * inner)):
            return False
        return self._median() <= 32 and self._percentile_lower(95) <= 64

    def to_dict(self) -> dict:
        return {"lines": self.count, "nonempty": self.nonempty, "hist": self.hist.tolist(),  # the cache's key: "lines"
                "leading": self.leading, "trailing": self.trailing}

    @classmethod
    def from_dict(cls, d: dict) -> "LineStats":
        return cls(int(d["lines"]), int(d["nonempty"]), np.array(d["hist"], dtype=np.int64), int(d["leading"]),
                   int(d["trailing"]))


class _LineCounter:
    def __init__(self) -> None:
        self.stats = LineStats()
        self.partial = 0  # length of the line still open at the end of the last chunk

    def add(self, cp: np.ndarray) -> None:
        nl = np.flatnonzero(cp == 10)
        if nl.size == 0:
            self.partial += len(cp)
            return
        lengths = np.empty(nl.size, dtype=np.int64)
        lengths[0] = self.partial + nl[0]
        lengths[1:] = np.diff(nl) - 1
        self.stats.add_lengths(lengths)
        self.partial = len(cp) - int(nl[-1]) - 1

    def finish(self) -> LineStats:
        if self.partial:  # a last line without a newline is a line
            self.stats.add_lengths(np.array([self.partial]))
            self.partial = 0
        return self.stats


def line_stats(text: str) -> LineStats:
    counter = _LineCounter()
    counter.add(np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32))
    return counter.finish()


# --- the encoded corpus ---------------------------------------------------------------------------


@dataclass
class EncodedCorpus:
    """A corpus as ids: in memory for small texts, a memory-mapped cache file for large ones."""

    ids: np.ndarray  # (n_chars,), dtype = vocab.dtype
    vocab: Vocab
    name: str  # for the default run directory
    sources: list[str]
    digest: str  # SHA-256 of the text (first 16 hex digits): a resumed run checks it
    line_stats: LineStats
    cache_file: Optional[Path] = None
    reused: bool = False
    labels: Optional["LineLabels"] = None  # a labelled corpus's (chargen.training.labels): one per line

    @property
    def n_chars(self) -> int:
        return int(len(self.ids))

    def text(self) -> str:
        """The whole text (decoded again); only for corpora that fit in memory."""
        return self.vocab.decode_ids(self.ids)

    def recoded(self, vocab: Vocab) -> "EncodedCorpus":
        """The same text as ids of `vocab`, which must hold every character of this one's (e.g.
        a model's vocabulary grown by this corpus's characters). In memory."""
        missing = [c for c in self.vocab.chars if c not in vocab]
        if missing:
            raise VocabularyError(f"the vocabulary lacks {', '.join(map(repr, missing[:5]))} of the corpus")
        if vocab == self.vocab:
            return self
        lut = np.array([vocab.index[c] for c in self.vocab.chars], dtype=vocab.dtype)
        return dataclasses.replace(self, ids=lut[np.asarray(self.ids)], vocab=vocab, cache_file=None)

    @classmethod
    def from_text(cls, text: str, name: str = "corpus", sources: Optional[list[str]] = None) -> "EncodedCorpus":
        vocab = Vocab.from_text(text)
        return cls(ids=vocab.encode(text), vocab=vocab, name=name, sources=sources or [name],
                   digest=text_digest(text), line_stats=line_stats(text))


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def corpus_name(paths: list[str]) -> str:
    return "stdin" if paths[0] == "-" else (source_stem(describe_source(paths[0])) or "pipe")


def default_cache_dir() -> Path:
    if os.environ.get("CHARGEN_CACHE_DIR"):
        return Path(os.environ["CHARGEN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "chargen"


def _file_key(paths: list[str]) -> str:
    parts = []
    for p in paths:
        st = os.stat(p)
        parts.append([os.path.realpath(p), st.st_size, st.st_mtime_ns, st.st_ino])
    return hashlib.sha256(json.dumps([CACHE_FORMAT, parts]).encode()).hexdigest()[:24]


def _stamp(paths: list[str]) -> list[tuple[int, int]]:
    return [stamp(p) for p in paths]


def ingest(paths: list[str], *, cache_dir: Optional[Path] = None, stdin: Optional[BinaryIO] = None,
           chunk_bytes: int = CHUNK_BYTES, notice: Optional[Callable[[str], None]] = None) -> EncodedCorpus:
    """Read, check and encode the corpus into the cache (or find it there); ids come back memory-mapped."""
    check_paths(paths)
    streamed = [is_stream(p) for p in paths]  # (a stream's one reading is _spool's)
    for p, once in zip(paths, streamed):  # fail on a missing file before spooling stdin
        if not once:
            open_source(p).close()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the corpus cache {cache} ({exc.strerror or exc}); "
                         f"set CHARGEN_CACHE_DIR to a writable folder") from None
    spools: list[Path] = []
    try:
        read_paths = list(paths)
        digests = []  # a stream's content is its key: a pipe has no name or date that says what it held
        for i, (p, once) in enumerate(zip(paths, streamed)):
            if once:
                stream = open_source(p, stdin)
                try:
                    spool, digest = _spool(stream, describe_source(p), cache, chunk_bytes)
                finally:
                    if p != "-":
                        stream.close()
                spools.append(spool)
                read_paths[i] = str(spool)
                digests.append(digest)
        if spools:
            key_paths = [p for p, once in zip(paths, streamed) if not once]
            key = hashlib.sha256(json.dumps([CACHE_FORMAT, digests, paths,
                                             _file_key(key_paths) if key_paths else ""]).encode()).hexdigest()[:24]
        else:
            key = _file_key(paths)
        meta_path, ids_path = cache / f"{key}.json", cache / f"{key}.ids"
        sources = [describe_source(p) for p in paths]
        # One process builds an entry; another that wants it at the same time waits, then reuses it.
        with _entry_lock(cache / f".{key}.lock", notice):
            found = _load_entry(meta_path, ids_path, paths, sources)
            if found is not None:
                os.utime(meta_path)  # most recently used
                return found
            return _build_entry(paths, read_paths, sources, meta_path, ids_path, chunk_bytes, notice)
    finally:
        for spool in spools:
            spool.unlink(missing_ok=True)


@contextmanager
def _entry_lock(path: Path, notice: Optional[Callable[[str], None]]) -> Iterator[None]:
    """An exclusive flock on the entry's lock file for the block (released by the kernel if the
    process dies). Where locks cannot be taken (some network file systems) it goes on without:
    entries are still written by atomic renames, so the worst case is encoding twice."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if notice is not None:
                notice("another process is encoding the same corpus into the cache; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


def _spool(stream: BinaryIO, source: str, cache: Path, chunk_bytes: int) -> tuple[Path, str]:
    """A stream (stdin, a pipe such as bash's <(...), a FIFO) can be read once; the two passes
    need a file: its bytes copied into one, and their digest."""
    h = hashlib.sha256()
    fd, name = tempfile.mkstemp(prefix=".stdin.", suffix=".tmp", dir=cache)
    with os.fdopen(fd, "wb") as out:
        while True:
            try:
                block = stream.read(chunk_bytes)
            except (OSError, ValueError) as exc:
                raise CorpusError(f"cannot read {source} ({exc})") from None
            if not block:
                break
            h.update(block)
            out.write(block)
    return Path(name), h.hexdigest()


def _load_entry(meta_path: Path, ids_path: Path, paths: list[str], sources: list[str]) -> Optional[EncodedCorpus]:
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != CACHE_FORMAT:
            return None
        vocab = Vocab.from_json(meta["vocab"])
        n = int(meta["n_chars"])
        if ids_path.stat().st_size != n * vocab.dtype.itemsize:
            return None
        ids = np.memmap(ids_path, dtype=vocab.dtype, mode="r", shape=(n,))
        return EncodedCorpus(ids=ids, vocab=vocab, name=corpus_name(paths), sources=sources, digest=meta["digest"],
                             line_stats=LineStats.from_dict(meta["lines"]), cache_file=ids_path, reused=True)
    except (OSError, ValueError, KeyError, TypeError, CheckpointError):
        return None  # absent, half-written or from another version: build it again


def _build_entry(paths, read_paths, sources, meta_path: Path, ids_path: Path, chunk_bytes: int,
                 notice) -> EncodedCorpus:
    before = _stamp(read_paths)
    t0 = time.perf_counter()

    # Pass 1: which characters occur, line statistics, digest.
    seen = np.zeros(MAX_CODEPOINT, dtype=bool)
    ascii_seen = b""  # the ASCII bytes seen so far, for a fast "anything new?" check
    lines = _LineCounter()
    h = hashlib.sha256()
    n_bytes = 0
    for buf, text in corpus_chunks(read_paths, chunk_bytes=chunk_bytes, names=sources):
        h.update(buf)
        n_bytes += len(buf)
        if text is None:
            if buf.translate(None, ascii_seen):  # a byte not seen before
                seen[np.frombuffer(buf, dtype=np.uint8)] = True
                ascii_seen = bytes(np.flatnonzero(seen[:128]).astype(np.uint8))
            cp = np.frombuffer(buf, dtype=np.uint8)
        else:
            cp = codepoints(buf, text)
            seen[cp] = True
            ascii_seen = bytes(np.flatnonzero(seen[:128]).astype(np.uint8))
        lines.add(cp)
    chars = [chr(c) for c in np.flatnonzero(seen)]
    vocab = Vocab(chars)  # sorted by code point, as Vocab.from_text

    # Pass 2: encode through a lookup table into a temp file, renamed into place when complete.
    lut = np.zeros(MAX_CODEPOINT, dtype=vocab.dtype)
    lut[[ord(c) for c in chars]] = np.arange(len(chars), dtype=vocab.dtype)
    # ASCII chunks of a byte-sized vocabulary are translated by bytes.translate, 5x faster than numpy.
    table = bytes(lut[:256].astype(np.uint8)) if vocab.dtype == np.uint8 else None
    n_chars = 0
    try:
        with atomic_writer(ids_path) as out:  # renamed into place only when complete
            for buf, text in corpus_chunks(read_paths, chunk_bytes=chunk_bytes, names=sources):
                if text is None and table is not None:
                    encoded = buf.translate(table)
                else:
                    encoded = lut[codepoints(buf, text)]
                n_chars += len(encoded)
                out.write(encoded)
            if _stamp(read_paths) != before:
                raise CorpusError(f"{', '.join(sources)} changed while it was being read; try again")
        meta = {"format": CACHE_FORMAT, "n_chars": n_chars, "n_bytes": n_bytes, "digest": h.hexdigest()[:16],
                "vocab": vocab.to_json(), "lines": lines.finish().to_dict(), "sources": sources,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write(meta_path, json.dumps(meta).encode())  # last: an entry without its .json is not an entry
    except WriteError as exc:
        raise UsageError(f"cannot write the corpus cache in {ids_path.parent} ({exc.reason}); "
                         f"set CHARGEN_CACHE_DIR to a writable folder with room for it") from None
    elapsed = time.perf_counter() - t0
    if notice is not None and n_bytes >= 8 * CHUNK_BYTES:
        notice(f"encoded {n_bytes / 1e6:,.0f} MB in {elapsed:.1f} s ({n_bytes / 1e6 / max(elapsed, 1e-9):,.0f} MB/s) "
               f"into {ids_path}")
    _prune(ids_path.parent, keep=ids_path.stem)
    ids = np.memmap(ids_path, dtype=vocab.dtype, mode="r", shape=(n_chars,)) if n_chars else np.zeros(0, vocab.dtype)
    return EncodedCorpus(ids=ids, vocab=vocab, name=corpus_name(paths), sources=sources, digest=meta["digest"],
                         line_stats=lines.stats, cache_file=ids_path)


def _prune(cache: Path, keep: str) -> None:
    """Drop the least recently used entries beyond MAX_ENTRIES (and stale temp files)."""
    try:
        entries = sorted(cache.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for meta in entries[MAX_ENTRIES:]:
            if meta.stem != keep:
                meta.unlink(missing_ok=True)
                meta.with_suffix(".ids").unlink(missing_ok=True)
                (cache / f".{meta.stem}.lock").unlink(missing_ok=True)
        day_ago = time.time() - 86400
        for tmp in cache.glob(".*.tmp"):
            if tmp.stat().st_mtime < day_ago:
                tmp.unlink(missing_ok=True)
    except OSError:
        pass  # a cache that cannot be tidied still works
