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

A list trained line by line (line mode, the default for lists) is laid out differently: each
line is one row, from the start of a line as it is scored and sampled, padded to its batch's
longest line (lines of similar length share a batch; P pads, masked out of the loss):

    inputs:   \n M a r y          targets:  M a r y \n
              \n A n n P                    A n n \n P
              \n J o P P                    J o \n P P

and no state carries from one batch to the next: every row starts from the model's learned
start state. `LineBatches` holds them; `LineLoader` hands the trainer batch k as WindowLoader
hands window k.

`prepare_training_data` does all of it for a run: shuffle a list of lines, split off validation,
lay the training text out into streams (this process's share of them, under torchrun) and
gather what evaluation and the checkpoint need. `WindowLoader` hands the trainer window k.
torch is imported only by WindowLoader, so the rest serves torch-free readers too.
"""

from __future__ import annotations

import random
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Optional, Sequence

import numpy as np

from ..config import counted
from ..errors import CorpusError, UsageError
from ..tokenizer import Vocab
from .ingest import EncodedCorpus, corpus_chunks, corpus_name, describe_source, text_digest
from ..sampling.labels import line_key
from .labels import LineLabels

if TYPE_CHECKING:
    import torch

# A list of lines is shuffled in memory (see shuffle_lines) up to this many characters.
MAX_SHUFFLED_CHARS = 16_000_000
# The start-of-line state and the unigram entropy are taken from this much of the training text.
START_STATE_CHARS = 1 << 20
UNIGRAM_CHARS = 1 << 20
# The longest line a list trains: line mode trains each line whole, from the start-of-line state,
# and one line of 200,000 characters made its batch's every row 200,000 steps long (a step of
# minutes past --time; 1.25 GB). A longer line trains its first MAX_LIST_LINE characters: four
# times the longest a list's lines are at the 95th percentile (LineStats.line_oriented), and more
# than a list's samples run to (--length 200 a line by default).
MAX_LIST_LINE = 256
# Validation starts at a line start if one is within this many characters of the cut.
SPLIT_SEARCH = 1000
# On a GPU the training streams are copied to GPU memory whole when they are at most this large.
DEVICE_DATA_BYTES = 2 << 30


@dataclass
class Corpus:
    """A corpus held as one string: for small texts, tests and `chargen eval`. Training on
    files goes through `ingest`, which never holds the whole text."""

    text: str
    name: str  # for the default run directory and `info`
    sources: list[str]


def read_corpus(paths: list[str], stdin: Optional[BinaryIO] = None) -> Corpus:
    """Read one or more UTF-8 files ('-' is stdin) into one text; files are joined by newlines."""
    text = "".join(text if text is not None else buf.decode("ascii") for buf, text in corpus_chunks(paths, stdin))
    return Corpus(text=text, name=corpus_name(paths), sources=[describe_source(p) for p in paths])


def split_point(n: int, val_fraction: float, find_newline: Callable[[int, int], int]) -> int:
    """Where validation starts in a text of n characters: the last `val_fraction` of it, moved
    to the next line start when one is near (n for 0: nothing held out). `find_newline(lo, hi)` is
    the index of the first newline in [lo, hi), or -1."""
    if val_fraction == 0:
        return n
    cut = n - max(1, int(n * val_fraction))
    at = find_newline(cut, min(n - 1, cut + SPLIT_SEARCH))
    return at + 1 if at >= 0 else cut


def split_train_val(text: str, val_fraction: float) -> tuple[str, str]:
    """A list's text, and its last `val_fraction` for validation (starting at a line where one is
    near; a short list's cut inside its last line holds that line out whole)."""
    cut = split_point(len(text), val_fraction, lambda lo, hi: text.find("\n", lo, hi))
    line_start = text.rfind("\n", 0, cut) + 1
    if cut < len(text) and text[cut - 1] != "\n" and line_start > 1:
        cut = line_start
    return text[:cut], text[cut:]


def shuffle_lines(text: str, seed: int) -> str:
    """The same lines in a seeded random order.

    Lists (names, titles) are often sorted; order carries no meaning in them, but a model
    trained on a sorted list learns to copy the previous line's prefix, which it never has when
    it samples one line from scratch, and a validation tail of a sorted list is one letter's
    worth of lines. Shuffled, the tail is a fair random sample.
    """
    lines = list_lines(text)
    return joined(lines, shuffled_order(len(lines), seed), trailing=text.endswith("\n"))


def capped_lines(text: str, what: str, notice: Callable[[str], None], numbered: bool = True) -> str:
    """`text` with each line longer than MAX_LIST_LINE cut to its first MAX_LIST_LINE characters,
    said in a notice (`what`: the text, as the notice names it; `numbered`: the longest line named
    by its number, which means nothing in files joined, else by its start alone)."""
    lines = text.split("\n")
    long = [number for number, line in enumerate(lines) if len(line) > MAX_LIST_LINE]
    if not long:
        return text
    longest = max(long, key=lambda number: len(lines[number]))
    start = lines[longest][:24]
    notice(f"{what}: {counted(len(long), 'line')} longer than {MAX_LIST_LINE:,} characters (the longest: "
           f"{f'line {longest + 1:,}, ' if numbered else ''}{len(lines[longest]):,} characters, {start!r}...) "
           f"{'trains' if len(long) == 1 else 'train'} on {'its' if len(long) == 1 else 'their'} first "
           f"{MAX_LIST_LINE:,}, as a list trains each line whole")
    return "\n".join(line[:MAX_LIST_LINE] for line in lines)


def list_lines(text: str) -> list[str]:
    """A list's lines: the non-empty lines of its text (an empty line is no name: it would train
    nothing, and take a place among the lines held out)."""
    return [line for line in text.split("\n") if line]


def shuffled_order(n_lines: int, seed: int) -> list[int]:
    """The seeded order in which a list of `n_lines` lines trains (shuffle_lines's: a shuffle depends
    only on the seed and the number of items)."""
    order = list(range(n_lines))
    random.Random(seed).shuffle(order)
    return order


def held_out(order: list[int], holdout: Sequence[int]) -> tuple[list[int], list[int]]:
    """`order` without the lines in `holdout` (the training lines, in their order), and `holdout`."""
    held = set(holdout)
    if not held <= set(order) or len(held) != len(holdout):
        raise ValueError("holdout must be distinct line indices of the list")
    return [i for i in order if i not in held], list(holdout)


def joined(lines: list[str], order: list[int], trailing: bool = True) -> str:
    """The lines `order` names, one a line (each ended by a newline; the last not, with trailing=False)."""
    return "\n".join(lines[i] for i in order) + ("\n" if trailing and order else "")


def line_ids(vocab, text: str) -> list[np.ndarray]:
    """The non-empty lines of `text` as id arrays, each followed by the newline id (a character
    the vocabulary lacks dropped)."""
    lines = [line for line in text.split("\n") if line]
    encoded, whole = vocab.encode_lines(lines)
    return [ids if ok else np.append(vocab.encode(line, skip_unknown=True).astype(np.int64), vocab.index["\n"])
            for line, ids, ok in zip(lines, encoded, whole.tolist())]


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


def check_trainable(n_train: int, seq_len: int, batch_size: int, source: str, one_line: bool = False,
                    part: str = "its training part") -> int:
    """The batch size to use: as asked, or fewer streams if the corpus is too short for that many.

    A corpus that cannot fill even one window of seq_len + 1 characters is an error (`one_line`:
    it is a single line, which says what a list needs too; `part`: what n_train counts).
    """
    if n_train < seq_len + 1:
        raise CorpusError(
            f"{source} is too short: {part} has {counted(n_train, 'character')}, but one window needs "
            f"`seq_len` + 1 = {seq_len + 1}; use a longer corpus or a smaller `seq_len`"
            + ("; a list of names needs two lines at least (it then adapts a trained model)" if one_line else "")
        )
    return min(batch_size, n_train // (seq_len + 1))


def shard(n: int, rank: int, world: int) -> slice:
    """Process `rank`'s share of n items out of `world` (contiguous; the last ones may get one fewer)."""
    per, extra = divmod(n, world)
    start = rank * per + min(rank, extra)
    return slice(start, start + per + (1 if rank < extra else 0))


# --- windows for the trainer ------------------------------------------------------------------


class WindowLoader:
    """Window k of every stream as (inputs, targets) long tensors (B, T) on the device.

    `streams` is an array (B, L), or FileStreams over a cache file: then each window is read
    from the file when needed, so a corpus larger than memory costs a few megabytes of buffer.
    On a GPU the streams go to GPU memory once when they fit, or else each window goes through
    pinned memory without blocking.
    """

    def __init__(self, streams: np.ndarray | FileStreams, seq_len: int, device: "torch.device | str" = "cpu"):
        import torch  # here, not at the top: data.py also serves torch-free readers (eval, ingest)

        self.torch = torch
        self.streams, self.seq_len, self.device = streams, seq_len, torch.device(device)
        self.on_device = None
        rows, length = streams.shape
        if self.device.type != "cpu" and rows * length * streams.dtype.itemsize <= DEVICE_DATA_BYTES:
            dtype = torch.uint8 if streams.dtype == np.uint8 else torch.int32
            self.on_device = torch.empty((rows, length), dtype=dtype, device=self.device)
            host_dtype = np.uint8 if dtype == torch.uint8 else np.int32
            for i in range(rows):  # a row at a time: never the whole corpus in host memory at once
                row = streams.row(i) if isinstance(streams, FileStreams) else np.asarray(streams[i])
                self.on_device[i].copy_(torch.from_numpy(row.astype(host_dtype, copy=False)))

    def __len__(self) -> int:
        """Windows per epoch."""
        return windows_per_epoch(self.streams, self.seq_len)

    def window(self, k: int) -> tuple["torch.Tensor", "torch.Tensor", None]:
        start = k * self.seq_len
        if self.on_device is not None:
            block = self.on_device[:, start : start + self.seq_len + 1].long()
        else:
            if isinstance(self.streams, FileStreams):
                raw = self.streams.block(start, self.seq_len + 1)
            else:
                raw = np.asarray(self.streams[:, start : start + self.seq_len + 1])
            block = self.torch.from_numpy(raw.astype(np.int64))
            if self.device.type == "cuda":
                block = block.pin_memory().to(self.device, non_blocking=True)
            elif self.device.type != "cpu":
                block = block.to(self.device)
        return block[:, :-1], block[:, 1:], None  # (B, T) each; no labels

    def close(self) -> None:
        if isinstance(self.streams, FileStreams):
            self.streams.close()


# --- a list, line by line ----------------------------------------------------------------------

LINE_SORT_CHUNK = 16  # lines are sorted by length within runs of this many batches (less padding)
PAD = -1  # the id of padding in a batch of lines: not an input, not scored (evaluation reads it from here)


@dataclass
class LineBatches:
    """A list's training lines as padded batches for one epoch, in training order: batch k is `seqs[k]`,
    (B, L + 2) int32, each row "\n" + line + "\n" padded with PAD; this process's rows only (under
    torchrun). Each epoch groups the lines anew (`for_epoch`, seeded by the run's seed and the epoch,
    so a resumed run gets the same batches): a list seen a hundred times is not the same batches in
    the same order a hundred times."""

    seqs: list[np.ndarray]
    lines_per_batch: int  # B, all processes together
    chars: int  # characters predicted in an epoch (each line's characters and its newline), all processes
    labels: Optional[list[np.ndarray]] = None  # a labelled list's: batch k's rows' labels, (B,) int64
    epoch: int = 0
    pool: Optional["LinePool"] = field(default=None, repr=False)  # what every epoch's batches are made of

    @classmethod
    def of(cls, lines: list[np.ndarray], newline: int, lines_per_batch: int, seed: int,
           rows: slice = slice(None), labels: Optional[np.ndarray] = None) -> "LineBatches":
        """Lines (in their shuffled order; `labels`, one per line, with them) into epoch 0's batches of
        `lines_per_batch` (see LinePool.batches); a last partial batch is dropped, as streams drop
        their last partial window."""
        return LinePool.of(lines, newline, lines_per_batch, seed, rows, labels).batches(0)

    def for_epoch(self, epoch: int) -> "LineBatches":
        return self if epoch == self.epoch or self.pool is None else self.pool.batches(epoch)


@dataclass
class LinePool:
    """A list's training lines, end to end in one array, and how they are batched."""

    flat: np.ndarray  # int32: every line's ids, one after the other (no newlines)
    starts: np.ndarray  # int64 (N,): where each line begins in `flat`
    lengths: np.ndarray  # int64 (N,)
    labels: Optional[np.ndarray]  # int64 (N,): a labelled list's line labels
    newline: int
    lines_per_batch: int
    seed: int
    rows: slice  # this process's rows of every batch

    @classmethod
    def of(cls, lines: list[np.ndarray], newline: int, lines_per_batch: int, seed: int, rows: slice,
           labels: Optional[np.ndarray]) -> "LinePool":
        lengths = np.array([len(ids) for ids in lines], dtype=np.int64)
        flat = np.concatenate(lines).astype(np.int32) if lines else np.zeros(0, np.int32)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if lines else lengths
        return cls(flat, starts, lengths, None if labels is None else np.asarray(labels, dtype=np.int64), newline,
                   lines_per_batch, seed, rows)

    def batches(self, epoch: int) -> LineBatches:
        """Epoch `epoch`'s batches: the lines in their shuffled order (epoch 0) or a permutation of
        them seeded by (seed, epoch), sorted by length within runs of LINE_SORT_CHUNK batches (less
        padding), cut into batches, the batches then shuffled."""
        b = self.lines_per_batch
        n_batches = len(self.lengths) // b
        if epoch == 0:
            order = np.arange(len(self.lengths))
            batch_order = random.Random(self.seed).sample(range(n_batches), n_batches)
        else:
            rng = np.random.default_rng([self.seed % 2**64, epoch])  # any int seed, negative too
            order = rng.permutation(len(self.lengths))
            batch_order = rng.permutation(n_batches).tolist()
        order = order[: n_batches * b]
        chunk = np.arange(order.size) // (b * LINE_SORT_CHUNK)
        order = order[np.lexsort((self.lengths[order], chunk))]  # stable: ties keep their order
        groups = [order[k * b : (k + 1) * b] for k in batch_order]
        chars = sum(int(self.lengths[g].sum()) + b for g in groups)  # each line's characters and its newline
        seqs = [padded_lines(self.flat, self.starts[g], self.lengths[g], self.newline)[self.rows] for g in groups]
        return LineBatches(seqs, b, chars,
                           None if self.labels is None else [self.labels[g][self.rows] for g in groups],
                           epoch, self)


def padded_lines(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, newline: int,
                 dtype: type = np.int32) -> np.ndarray:
    """(B, max length + 2): line k, the `lengths[k]` ids of `flat` from `starts[k]`, as "\n" + line +
    "\n", then PAD. The layout of every line loss, training's and evaluation's. Kate, in a batch
    whose longest line has 5 characters::

        row                     \n K a t e \n PAD
        inputs: columns [:-1]   \n K a t e \n       (what follows the line's newline is never scored)
        targets: columns [1:]      K a t e \n PAD   (PAD is not scored)
    """
    seq = np.full((len(lengths), int(lengths.max()) + 2), PAD, dtype=dtype)
    cols = np.arange(seq.shape[1] - 2)
    inside = cols[None, :] < lengths[:, None]  # (B, L)
    seq[:, 1:-1][inside] = flat[(starts[:, None] + cols[None, :])[inside]]
    seq[:, 0] = newline
    seq[np.arange(len(lengths)), lengths + 1] = newline
    return seq


class LineLoader:
    """Batch k of a LineBatches as (inputs, targets) long tensors (B, L + 1) on the device; the
    targets' padding is -100, which cross-entropy ignores, so the loss is the mean over the lines'
    real characters: the definition validation and `chargen eval` use for lists."""

    def __init__(self, batches: LineBatches, device: "torch.device | str" = "cpu"):
        import torch  # here, not at the top: data.py also serves torch-free readers (eval, ingest)

        self.torch, self.batches, self.device = torch, batches, torch.device(device)

    def __len__(self) -> int:
        return len(self.batches.seqs)

    def window(self, k: int) -> tuple["torch.Tensor", "torch.Tensor", Optional["torch.Tensor"]]:
        seq = self.torch.from_numpy(self.batches.seqs[k].astype(np.int64)).to(self.device)
        x, y = seq[:, :-1], seq[:, 1:]
        labels = self.batches.labels
        labels = self.torch.from_numpy(labels[k]).to(self.device) if labels is not None else None  # (B,)
        return x.clamp(min=0), y.masked_fill(y == PAD, -100), labels  # (B, L + 1) each, and the rows' labels

    def close(self) -> None:
        pass


def calibration_rows(data: "TrainData", max_chars: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """About `max_chars` characters of the training text as the model reads it, to measure a model
    on before training (chargen.training.finetune's calibration); the same in every process. A
    list: a seeded sample of its lines as `padded_lines` rows (B, L + 2), and their labels (B,) for a
    labelled list. Prose: its head, as one row. Inputs are a row's columns [:-1], targets [1:]."""
    pool = data.line_batches.pool if data.line_batches is not None else None
    if pool is None:
        return data.start_ids[None, : max_chars + 1], None
    order = np.random.default_rng(0).permutation(len(pool.lengths))
    take = order[: int(np.searchsorted(np.cumsum(pool.lengths[order] + 1), max_chars)) + 1]
    seq = padded_lines(pool.flat, pool.starts[take], pool.lengths[take], pool.newline, np.int64)
    return seq, (pool.labels[take] if pool.labels is not None else None)


# --- everything a training run needs of its corpus --------------------------------------------


@dataclass
class TrainData:
    """A corpus prepared for one run (one process's share of it, under torchrun)."""

    vocab: Vocab
    source: str  # the corpus files, for messages
    digest: str  # of the training text (and validation file): a resumed run checks it
    line_oriented: bool
    streams: np.ndarray | FileStreams  # (B / world, L): this process's rows of the global layout
    rows: slice  # which rows of the global (B, L) layout `streams` holds
    batch_size: int  # B, the global number of streams
    seq_len: int  # T, characters per window
    n_windows: int  # windows per epoch
    train_chars: int
    val_chars: int
    val_ids: np.ndarray  # int64: this process's share of the validation text (prose)
    val_lines: Optional[list[np.ndarray]]  # this process's share of the validation lines (lists)
    start_ids: np.ndarray  # int64: the head of the training text, for the start-of-line state
    unigram_entropy: float
    training_lines: Optional[list[str]]  # the distinct lines of a list, for `sample --novel` ("LABEL\tline" if labelled)
    line_batches: Optional[LineBatches] = None  # line mode: the batches (then `streams` is unused)
    labels: Optional[LineLabels] = None  # a labelled list's: the names, and each training line's label
    val_labels: Optional[np.ndarray] = None  # the label of each of val_lines

    @property
    def chars_per_step(self) -> int:
        """Characters predicted per step, all processes together."""
        if self.line_batches is not None:
            return self.line_batches.chars // max(1, self.n_windows)
        return self.batch_size * self.seq_len


def is_list(corpus: EncodedCorpus, line_mode: Optional[bool] = None) -> bool:
    """A corpus trained as a set of lines: short, non-empty lines (LineStats.line_oriented),
    labelled, or declared one (`line_mode` True, --line-mode: a list of titles or sentences whose
    median line is longer than a name's was trained as prose, the flag unheard)."""
    return corpus.line_stats.line_oriented() or corpus.labels is not None or line_mode is True


def shuffled_as_lines(corpus: EncodedCorpus, line_mode: Optional[bool] = None) -> bool:
    """A list (is_list) that is shuffled line by line in memory: every labelled one, an unlabelled
    one up to MAX_SHUFFLED_CHARS (a larger one trains as running text, in file order)."""
    return is_list(corpus, line_mode) and (corpus.labels is not None or corpus.n_chars <= MAX_SHUFFLED_CHARS)


def trained_by_line(corpus: EncodedCorpus, config) -> bool:
    """Whether `config` (a TrainConfig) trains `corpus` line by line: a list shuffled as lines,
    unless --no-line-mode."""
    return shuffled_as_lines(corpus, config.line_mode) and config.line_mode is not False


def prepare_training_data(corpus: Corpus | EncodedCorpus, config, *, val_text: Optional[str] = None,
                          holdout: Optional[Sequence[int]] = None, rank: int = 0, world: int = 1,
                          notice: Callable[[str], None] = lambda message: None) -> TrainData:
    """Split, shuffle (lists) and lay out the corpus for training with `config` (a TrainConfig).
    `holdout`: the lines of a list (indices in the corpus's order) to validate on, instead of the
    last `val_fraction` of its shuffled lines (cross-validation's folds; not with `val_text`)."""
    if isinstance(corpus, Corpus):
        corpus = EncodedCorpus.from_text(corpus.text, corpus.name, corpus.sources)
    source = ", ".join(corpus.sources)
    vocab = corpus.vocab
    line_oriented = shuffled_as_lines(corpus, config.line_mode)
    if corpus.labels is not None:
        _check_labelled(corpus, config, val_text is not None, source)
    elif is_list(corpus, config.line_mode) and not line_oriented:
        notice(f"a list of {corpus.line_stats.nonempty:,} lines is too large to shuffle in memory; "
               f"training on it as running text, in file order")
    if holdout is not None and (val_text is not None or not line_oriented):
        raise ValueError("holdout: the lines of a list, instead of a validation text")
    # A large corpus is a cache file: the parts needed are read from it, not touched through its
    # memory map, which would pin megabytes of read-ahead per touch (see FileStreams).
    from_file = corpus.cache_file if isinstance(corpus.ids, np.memmap) and not line_oriented else None
    split = _split(corpus, config, val_text, holdout, line_oriented, from_file, notice)

    line_batches = None
    if trained_by_line(corpus, config):
        line_batches = _line_batches(split.text, vocab, config, source, rank, world, notice,
                                     split.labels.of_line if split.labels is not None else None)
    batch_size = check_trainable(len(split.train_ids), config.seq_len, config.batch_size, source,
                                 one_line=corpus.line_stats.nonempty <= 1) if line_batches is None else config.batch_size
    if len(split.val_ids) < 2 and (val_text is not None or config.val_fraction > 0):
        raise CorpusError(f"{source} is too short for validation: its validation part has {len(split.val_ids)} "
                          f"character(s); use a longer corpus, a larger `val_fraction` or `val_file`")
    batch_size = _shared_out(batch_size, config.batch_size, world, source)
    if batch_size < config.batch_size:
        notice(f"the corpus is short: using {batch_size} streams instead of --batch-size {config.batch_size}")
    # (B, L): the global layout, whatever the world size; none in line mode (the lines are in line_batches)
    layout = stream_view(split.train_ids if line_batches is None else split.train_ids[:0], batch_size)
    rows = shard(batch_size, rank, world)  # this process's streams: a contiguous block of B / world
    if from_file is not None:  # the same layout, read from the file (train_ids is a prefix of it)
        streams = FileStreams(from_file, split.train_ids.dtype, batch_size, layout.shape[1], rows=rows)
    else:
        streams = layout[rows]

    val_head = _head(split.val_ids, split.val_offset, config.eval_chars, from_file).astype(np.int64)
    val_lines, val_labels = None, None
    if line_oriented:
        # A list is scored line by line from its start-of-line state, as it samples; carrying the
        # state over from the previous (unrelated) line would flatter it.
        val_lines = line_ids(vocab, vocab.decode(val_head))
        if split.val_labels is not None:
            val_labels = split.val_labels[: len(val_lines)][shard(len(val_lines), rank, world)]
        val_lines = val_lines[shard(len(val_lines), rank, world)]
    train_head = _head(split.train_ids, 0, max(START_STATE_CHARS, UNIGRAM_CHARS), from_file)
    return TrainData(
        vocab=vocab, source=source,
        digest=corpus.digest if val_text is None else text_digest(corpus.digest + val_text),
        line_oriented=line_oriented, streams=streams, rows=rows, batch_size=batch_size,
        n_windows=len(line_batches.seqs) if line_batches else windows_per_epoch(layout, config.seq_len),
        seq_len=config.seq_len,
        train_chars=line_batches.chars if line_batches else int(len(split.train_ids)),
        val_chars=int(len(split.val_ids)),
        val_ids=val_head[shard(val_head.size, rank, world)], val_lines=val_lines,
        start_ids=train_head[:START_STATE_CHARS].astype(np.int64),
        unigram_entropy=unigram_entropy(train_head[:UNIGRAM_CHARS], len(vocab)),
        training_lines=split.training_lines, line_batches=line_batches, labels=split.labels, val_labels=val_labels,
    )


@dataclass
class _Split:
    """A corpus split for training: its training ids, its validation ids and where they start in
    the corpus's ids (None: they are not the corpus's own); for a list, its training lines shuffled
    (`text`), their distinct lines (for `sample --novel`) and, labelled, the training and
    validation lines' labels."""

    train_ids: np.ndarray
    val_ids: np.ndarray
    val_offset: Optional[int] = None
    text: Optional[str] = None
    training_lines: Optional[list[str]] = None
    labels: Optional[LineLabels] = None
    val_labels: Optional[np.ndarray] = None


def _split(corpus: EncodedCorpus, config, val_text: Optional[str], holdout: Optional[Sequence[int]],
           line_oriented: bool, from_file: Optional[Path], notice: Callable[[str], None]) -> _Split:
    """Training and validation parts: a list's shuffled lines (each at most MAX_LIST_LINE
    characters), running text cut at a newline near the end (in place: the ids may be a
    memory-mapped file larger than memory), or all of the corpus with `val_text` beside it."""
    vocab = corpus.vocab
    if val_text is not None:
        val_text = _known_to(vocab, val_text, line_oriented, notice)
    if line_oriented and val_text is not None:
        val_text = capped_lines(val_text, "the validation file", notice)
    given = vocab.encode(val_text, skip_unknown=True) if val_text is not None else None
    if line_oriented:
        text = capped_lines(corpus.text(), ", ".join(corpus.sources), notice,
                            numbered=len(corpus.sources) == 1 and corpus.labels is None)  # (a file's own numbers)
        text, val_part, labels, val_labels, training_lines = _split_list(corpus, text, config, given is not None,
                                                                         holdout)
        return _Split(vocab.encode(text), given if given is not None else vocab.encode(val_part), None, text,
                      training_lines, labels, val_labels)
    if given is not None:
        return _Split(corpus.ids, given)
    ids = corpus.ids
    newline = vocab.index.get("\n")

    def find_newline(lo: int, hi: int) -> int:
        if newline is None or hi <= lo:
            return -1
        near = np.flatnonzero(_head(ids[lo:hi], lo, hi - lo, from_file) == newline)
        return lo + int(near[0]) if near.size else -1

    cut = split_point(len(ids), config.val_fraction, find_newline)
    return _Split(ids[:cut], ids[cut:], cut)


def _known_to(vocab: Vocab, val_text: str, line_oriented: bool, notice: Callable[[str], None]) -> str:
    """A validation file's text that the model can score, said in a notice where that is not all of
    it (they were left out without a word): a list's lines without a character the vocabulary lacks
    (what is left of a line without its unknown letters is no line of the list), prose without those
    characters."""
    unknown = vocab.unknown_chars(val_text)
    if not unknown:
        return val_text
    shown = ", ".join(repr(ch) for ch in unknown[:8]) + (", ..." if len(unknown) > 8 else "")
    if line_oriented:
        lines = val_text.split("\n")
        kept = [line for line in lines if not vocab.count_unknown(line)]
        if not any(kept):
            raise CorpusError(f"no line of the validation file holds only characters the model knows ({shown}); "
                              f"validate on lines of the corpus's alphabet")
        notice(f"the validation file: {counted(len(lines) - len(kept), 'line')} with characters the model does not know "
               f"({shown}) left out of validation")
        return "\n".join(kept)
    notice(f"the validation file: {counted(vocab.count_unknown(val_text), 'character')} the model does not know "
           f"({shown}) left out of validation")
    return val_text


def _head(part: np.ndarray, offset: Optional[int], n: int, from_file: Optional[Path]) -> np.ndarray:
    """part[:n] in memory; `part` starts at `offset` in the corpus's ids (None: it is not the
    corpus's), read from `from_file`, the corpus's cache file, where there is one."""
    n = min(n, len(part))
    if from_file is not None and offset is not None:
        return read_ids(from_file, part.dtype, offset, offset + n)
    return np.asarray(part[:n])


def _shared_out(batch_size: int, asked: int, world: int, source: str) -> int:
    """The streams (at most `batch_size`, of the `asked` --batch-size) that `world` processes share equally."""
    if world == 1:
        return batch_size
    if asked % world:
        raise UsageError(f"`batch_size` {asked} must be a multiple of the number of processes ({world}): "
                         f"each trains an equal share of the streams")
    batch_size -= batch_size % world
    if batch_size == 0:
        raise CorpusError(f"{source} is too short to give each of {world} processes one stream")
    return batch_size


def _split_list(corpus: EncodedCorpus, full_text: str, config, val_file: bool,
                holdout: Optional[Sequence[int]] = None):
    """A list (`full_text`, the corpus's text) shuffled (see shuffle_lines) and split: (training
    text, validation text or None with a validation file, the training lines' labels, the
    validation lines' labels, the distinct lines for `sample --novel`). Lists are small: shuffled
    as text, then encoded again."""
    if corpus.labels is not None:
        return _labelled_split(full_text, corpus.labels, config, holdout)
    if holdout is not None:  # the lines a fold trains on: what it knows (--novel, its start label) is those
        lines = list_lines(full_text)
        kept, held = held_out(shuffled_order(len(lines), config.seed), holdout)
        train = joined(lines, kept)
        return train, joined(lines, held), None, None, unique_lines(train)
    text, val_part = shuffle_lines(full_text, config.seed), None
    if not val_file:
        text, val_part = split_train_val(text, config.val_fraction)
    return text, val_part, None, None, unique_lines(full_text)


def _check_labelled(corpus: EncodedCorpus, config, val_file: bool, source: str) -> None:
    """A labelled list trains line by line, shuffled in memory, and holds out its own lines."""
    if corpus.n_chars > MAX_SHUFFLED_CHARS:
        raise CorpusError(f"{source}: a labelled list of {corpus.n_chars:,} characters is too large to shuffle "
                          f"in memory (at most {MAX_SHUFFLED_CHARS:,})")
    check_labelled_options(config, val_file)


def check_labelled_options(config, val_file) -> None:
    """The options a labelled list refuses (checked before anything is read, and again here)."""
    if val_file:
        raise UsageError("a labelled list holds out its own validation lines; drop `val_file`")
    if config.line_mode is False:
        raise UsageError("a labelled list trains line by line, each line from its label's start state; "
                         "drop --no-line-mode")


def _labelled_split(text: str, labels: LineLabels, config, holdout: Optional[Sequence[int]] = None
                    ) -> tuple[str, str, LineLabels, np.ndarray, list[str]]:
    """A labelled list shuffled (lines and labels together, seeded) and split as shuffle_lines and
    split_train_val split a list, or `holdout` held out: (training text, validation text, the
    training lines' labels, the validation lines' labels, the distinct "LABEL\tline" pairs for
    `sample --novel`)."""
    lines = list_lines(text)  # every line non-empty (chargen.training.labels)
    order = shuffled_order(len(lines), config.seed)
    if holdout is None:
        train, val, kept, held = every_label_trained(lines, order, labels.of_line, config.val_fraction)
    else:
        kept, held = held_out(order, holdout)
        train, val = joined(lines, kept), joined(lines, held)
    of_line = labels.of_line
    known = range(len(lines)) if holdout is None else kept  # a fold knows only the lines it trains on
    pairs = sorted({line_key(labels.names[of_line[i]], lines[i]) for i in known})
    index = lambda rows: np.array(rows, dtype=np.int64)  # noqa: E731
    return train, val, labels.take(of_line[index(kept)]), of_line[index(held)], pairs


def _cut(lines: list[str], order: list[int], val_fraction: float) -> tuple[str, str, list[int], list[int]]:
    """`order`'s lines split by split_train_val: (training text, validation text, the lines that
    train, the lines held out); a line the cut falls inside is in both."""
    train, val = split_train_val(joined(lines, order), val_fraction)
    complete = train.count("\n")  # lines wholly in training; one more if the cut is inside a line
    return train, val, order[: complete + (not train.endswith("\n"))], order[complete:]


def every_label_trained(lines: list[str], order: list[int], of_line: np.ndarray, val_fraction: float
                        ) -> tuple[str, str, list[int], list[int]]:
    """The split (_cut) of `order`, with one line of each label that the cut would hold out whole
    moved to the front, so that every label trains on a line: a label of a few lines could otherwise
    land in validation whole, its start state never trained (the base model's ko_KR:country did).
    Where every label has a training line, as in nearly every run, the split of `order` itself."""
    for _ in range(len(np.unique(of_line)) + 1):  # moving lines shifts the cut: a few rounds at most
        cut = _cut(lines, order, val_fraction)
        trained = set(of_line[cut[2]].tolist())
        first_held: dict[int, int] = {}
        for i in cut[3]:
            if int(of_line[i]) not in trained:
                first_held.setdefault(int(of_line[i]), i)
        if not first_held:
            return cut
        moved = set(first_held.values())
        order = [i for i in order if i in moved] + [i for i in order if i not in moved]
    return _cut(lines, order, val_fraction)


def lines_per_batch(n_lines: int, mean_chars: float, batch_size: int, seq_len: int) -> int:
    """Line mode's lines a step: batch_size x k, k the lines that fill seq_len characters on
    average (`mean_chars` a line, its newline included), so that a step sees about batch_size x
    seq_len characters as with streams; fewer for a short list (k is at most a quarter of its
    batches), and every line of a list shorter than two batches: one batch of a list of 50 lines
    at batch size 32 rather than 32 of them, the other 18 left out of the epoch (docs/benchmarks.md:
    0.002-0.009 nats better on unseen names at 40-60 lines adapted)."""
    k = max(1, min(round(seq_len / mean_chars), n_lines // (4 * batch_size)))
    return n_lines if n_lines < 2 * batch_size * k else batch_size * k


def _line_batches(text: str, vocab: Vocab, config, source: str, rank: int, world: int,
                  notice: Callable[[str], None], labels: Optional[np.ndarray] = None) -> LineBatches:
    """Line mode's batches: batch_size x k lines, k the lines that fill seq_len characters on
    average (so a step sees about batch_size x seq_len characters, as with streams, and the
    batches are the same whatever the number of processes), fewer for a short list."""
    lines = [ids[:-1] for ids in line_ids(vocab, text)]  # without their newlines
    mean = sum(len(ids) + 1 for ids in lines) / max(1, len(lines))
    per_batch = lines_per_batch(len(lines), mean, config.batch_size, config.seq_len)
    if per_batch == len(lines):  # every line, in one batch
        per_batch = len(lines) // world * world
        if per_batch == 0:
            raise CorpusError(f"{source} is too short to give each of {world} processes one line")
        notice(f"the list is short: {per_batch} lines a batch")
    return LineBatches.of(lines, vocab.index["\n"], per_batch, config.seed, shard(per_batch, rank, world), labels)
