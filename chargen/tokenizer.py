"""The character vocabulary.

The `tokenizers` library defines it and is its file format: a WordLevel model over single
characters, a pre-tokenizer that splits text into every character (newlines and spaces
included), and a Fuse decoder, so encode/decode round-trips any text made of known characters.
That JSON is stored in every checkpoint and can be exported as a Hugging Face tokenizer.json.

Bulk text is encoded by a vectorized numpy path over code points instead (a thousand times
faster than the tokenizers pipeline on a character model); a test proves they give the same ids.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

from .errors import CheckpointError, VocabularyError

# Every single character is one pre-token. `.` would skip newlines, `\X` would fuse graphemes.
_SPLIT_PATTERN = r"[\s\S]"
# The WordLevel model needs an unknown token name; a multi-character one can never be a vocabulary
# entry, so an unknown character makes `Tokenizer.encode` fail instead of mapping it silently.
_UNK = "<unk>"


def _describe(ch: str) -> str:
    """A character for a message: its code point too where it shows as nothing or as part of another."""
    if unicodedata.category(ch).startswith("M"):
        return f"{ch!r} (U+{ord(ch):04X}, a combining mark)"
    return repr(ch) if ch.isprintable() and not ch.isspace() else f"{ch!r} (U+{ord(ch):04X})"


def describe_chars(chars: Iterable[str]) -> str:
    return ", ".join(map(_describe, chars))


class Vocab:
    """An ordered list of characters; a character's id is its position."""

    def __init__(self, chars: Iterable[str]):
        self.chars: list[str] = list(chars)
        if not self.chars:
            raise VocabularyError("the vocabulary is empty")
        if any(len(c) != 1 for c in self.chars) or len(set(self.chars)) != len(self.chars):
            raise VocabularyError("a vocabulary must hold distinct single characters")
        self.index = {c: i for i, c in enumerate(self.chars)}
        codepoints = np.array([ord(c) for c in self.chars], dtype=np.int64)
        order = np.argsort(codepoints)
        self._sorted_codepoints = codepoints[order]
        self._sorted_ids = order.astype(np.int64)
        self.dtype = smallest_uint(len(self.chars))

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls(sorted(set(text)))

    def union(self, other: "Vocab") -> "Vocab":
        """Both vocabularies' characters, sorted by code point (as from_text orders them)."""
        return Vocab(sorted(set(self.chars) | set(other.chars)))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, ch: str) -> bool:
        return ch in self.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def conform(self, text: str) -> str:
        """`text` spelt as this vocabulary spells it. Text that Unicode calls canonically equivalent
        (é as one character, or as e and a combining acute accent) is the same text to a model:
        corpora are read in NFC (chargen.training.ingest), so the text's NFC form where the
        vocabulary knows all its characters; else the text as given (a model trained on text that
        was not NFC), else its NFD form; else NFC, whose characters an error then names.
        websampler.js's conform() is the same."""
        if text.isascii():
            return text  # (its own NFC and NFD)
        nfc = unicodedata.normalize("NFC", text)
        for form in (nfc, text, unicodedata.normalize("NFD", text)):
            if self._lookup(form)[1].all():
                return form
        return nfc

    # --- fast path --------------------------------------------------------------------------
    def _lookup(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Each character's position among the sorted code points, and whether it is there."""
        codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        pos = np.searchsorted(self._sorted_codepoints, codepoints)
        pos = np.minimum(pos, len(self._sorted_codepoints) - 1)
        return pos, self._sorted_codepoints[pos] == codepoints

    def encode(self, text: str, *, skip_unknown: bool = False) -> np.ndarray:
        """text -> ids in the smallest unsigned dtype that fits. Unknown characters raise,
        or are dropped with skip_unknown=True."""
        if not text:
            return np.zeros(0, dtype=self.dtype)
        pos, known = self._lookup(text)
        if not known.all():
            if not skip_unknown:
                bad = int(np.flatnonzero(~known)[0])
                line, column = text.count("\n", 0, bad) + 1, bad - text.rfind("\n", 0, bad)
                where = f"line {line}, column {column}" if "\n" in text else f"position {bad}"  # (a text of lines)
                raise VocabularyError(f"character {_describe(text[bad])} at {where} is not in the model's vocabulary")
            pos = pos[known]
        return self._sorted_ids[pos].astype(self.dtype)

    def encode_lines(self, lines: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
        """Each line's ids followed by the newline's (int64; views of one array, encoded in one
        pass where a call a line cost more than the network's scoring of it), and whether each
        line holds only characters the vocabulary has ((L,) bool; one that does not: its ids mean
        nothing). The vocabulary must hold the newline."""
        if not lines:
            return [], np.zeros(0, dtype=bool)
        pos, known = self._lookup("\n".join(lines) + "\n")
        ends = np.cumsum([len(line) + 1 for line in lines])  # (code points: utf-32's units, as _lookup counts)
        return np.split(self._sorted_ids[pos], ends[:-1]), np.logical_and.reduceat(known, np.r_[0, ends[:-1]])

    def count_unknown(self, text: str) -> int:
        return sum(1 for ch in text if ch not in self.index)

    def unknown_chars(self, text: str) -> list[str]:
        return sorted({ch for ch in text if ch not in self.index})

    def decode_ids(self, ids: np.ndarray) -> str:
        """decode() for a large id array, vectorized through code points."""
        table = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        return table[np.asarray(ids)].tobytes().decode("utf-32-le", "surrogatepass")

    def decode(self, ids: Iterable[int]) -> str:
        chars = self.chars
        return "".join(chars[int(i)] for i in ids)

    # --- tokenizers: the definition and the file format ---------------------------------------
    def to_tokenizer(self):
        # Imported here: reading a vocabulary (to sample) does not need it, and it costs start-up time.
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel(vocab=dict(self.index), unk_token=_UNK))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return tok

    def to_json(self) -> str:
        """The vocabulary as tokenizers JSON (what `Tokenizer.to_str()` writes)."""
        return self.to_tokenizer().to_str()

    @classmethod
    def from_json(cls, text: str) -> "Vocab":
        """Read the vocabulary back from tokenizers JSON, without importing tokenizers: the
        WordLevel vocab map is all we need, and sampling should start fast."""
        try:
            data = json.loads(text)
            mapping = data["model"]["vocab"]
            if data["model"].get("type") != "WordLevel" or not isinstance(mapping, dict):
                raise ValueError("not a WordLevel model")
            chars = sorted(mapping, key=lambda c: mapping[c])
            if [mapping[c] for c in chars] != list(range(len(chars))):
                raise ValueError("ids are not 0..n-1")
            return cls(chars)
        except (ValueError, KeyError, TypeError, VocabularyError) as exc:
            raise CheckpointError(f"the stored vocabulary is malformed ({exc})") from None

    def preview(self, limit: int = 80) -> str:
        shown = "".join(c if c.isprintable() and c != " " else {"\n": "⏎", " ": "␣", "\t": "⇥"}.get(c, "·") for c in self.chars[:limit])
        return shown + ("…" if len(self.chars) > limit else "")


def smallest_uint(n_values: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if n_values <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    return np.dtype(np.uint64)
