import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargen.errors import CheckpointError, VocabularyError
from chargen.tokenizer import Vocab, smallest_uint

# Any unicode text except lone surrogates (which cannot be UTF-8 encoded, so never reach us).
texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=200)


@given(texts)
@settings(max_examples=150, deadline=None)
def test_fast_encode_round_trips_and_matches_tokenizers(text):
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text
    tok = vocab.to_tokenizer()
    assert tok.encode(text).ids == ids.tolist()
    assert tok.decode(ids.tolist()) == text


@given(texts)
@settings(max_examples=50, deadline=None)
def test_json_round_trip(text):
    vocab = Vocab.from_text(text)
    again = Vocab.from_json(vocab.to_json())
    assert again == vocab
    assert again.encode(text).tolist() == vocab.encode(text).tolist()


def test_whitespace_newlines_emoji_and_combining_marks():
    text = "a b\n\tc\r\n🙂 e\u0301 日本語  \n\n"
    vocab = Vocab.from_text(text)
    assert vocab.decode(vocab.encode(text)) == text
    assert vocab.to_tokenizer().encode(text).ids == vocab.encode(text).tolist()


def test_unknown_character_is_named_or_skipped():
    vocab = Vocab.from_text("abc")
    with pytest.raises(VocabularyError, match="'z'"):
        vocab.encode("abz")
    assert vocab.decode(vocab.encode("azbz", skip_unknown=True)) == "ab"
    with pytest.raises(Exception):  # the tokenizers definition refuses it too
        vocab.to_tokenizer().encode("z")


def test_dtype_is_the_smallest_that_fits():
    assert Vocab.from_text("ab").encode("ab").dtype == np.uint8
    big = "".join(chr(0x4E00 + i) for i in range(300))
    assert Vocab.from_text(big).encode(big).dtype == np.uint16
    assert smallest_uint(256) == np.uint8 and smallest_uint(257) == np.uint16


def test_malformed_json_is_a_checkpoint_error():
    with pytest.raises(CheckpointError):
        Vocab.from_json("{not json")
    with pytest.raises(CheckpointError):
        Vocab.from_json('{"model": {"type": "BPE", "vocab": {}}}')


def test_conform_spells_text_as_the_vocabulary_does():
    nfc, nfd = "Jos\u00e9", "Jose\u0301"
    composed = Vocab.from_text("Jos\u00e9e")  # a model trained on NFC text (every corpus now)
    assert composed.conform(nfd) == nfc and composed.conform(nfc) == nfc
    decomposed = Vocab.from_text("Jose\u0301")  # one trained on decomposed text before corpora were NFC
    assert decomposed.conform(nfc) == nfd and decomposed.conform(nfd) == nfd
    both = Vocab.from_text("Jos\u00e9e\u0301")  # both spellings known: NFC, as the corpus had it
    assert both.conform(nfd) == nfc
    assert Vocab.from_text("abc").conform(nfd) == nfc  # neither: NFC, whose 'é' an error names
    mark = Vocab.from_text("a\u0301")  # a mark no letter takes precomposed stays as it is
    assert mark.conform("a\u0301") == "a\u0301" and mark.conform("Joe") == "Joe"
    with pytest.raises(VocabularyError, match=r"U\+0301, a combining mark"):
        Vocab.from_text("abc").encode("a\u0301")


@given(st.lists(st.text(alphabet=st.sampled_from(list("ab\n😀\udc80xé")), max_size=8), max_size=12))
@settings(max_examples=200, deadline=None)
def test_lines_encoded_in_one_pass_are_each_lines_own(lines):
    """encode_lines (score's and line_ids' one pass over a batch) gives each line what encoding it
    alone gives, then the newline, and marks the lines holding a character the vocabulary lacks
    (x; an astral character and a lone surrogate count as one code point each, as in _lookup)."""
    vocab = Vocab(["\n", "a", "b", "😀", "\udc80", "é"])
    encoded, whole = vocab.encode_lines(lines)
    assert len(encoded) == len(lines) and whole.dtype == bool and whole.shape == (len(lines),)
    for line, ids, ok in zip(lines, encoded, whole.tolist()):
        assert ok == ("x" not in line)
        if ok:
            assert ids.dtype == np.int64
            assert ids.tolist() == [*vocab.encode(line).tolist(), vocab.index["\n"]]
