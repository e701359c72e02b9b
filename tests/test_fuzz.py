"""Fuzzing the readers: every input ends in success or a one-line ChargenError, never another exception.

Each reader is fed mutations of a valid input (hypothesis): checkpoints (bytes, the safetensors
header's JSON, dtypes, shapes, offsets, and every metadata field, the vocabulary and the resume
state), corpora (random and broken UTF-8 bytes across chunk boundaries, NUL, long lines, mixed
newlines), `--config` TOML files, prompts and regular expressions. CI runs up to 750 cases per fuzz
test (11 tests)
(derandomized); `CHARGEN_FUZZ_EXAMPLES=100000 python -m pytest tests/test_fuzz.py` is the long
run recorded in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chargen
from chargen.checkpoint import read_checkpoint, save_checkpoint
from chargen.config import ModelConfig, TrainConfig, load_toml_config
from chargen.errors import ChargenError
from chargen.training.ingest import ingest
from chargen.tokenizer import Vocab

EXAMPLES = int(os.environ.get("CHARGEN_FUZZ_EXAMPLES", "750"))
LONG_RUN = "CHARGEN_FUZZ_EXAMPLES" in os.environ
_TMP = Path(tempfile.mkdtemp(prefix="chargen-fuzz-"))  # one scratch folder: hypothesis reruns examples
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG_RUN, database=None,
                suppress_health_check=list(HealthCheck))


def _one_line(exc: ChargenError) -> None:
    message = str(exc)
    assert message and "\n" not in message, repr(message)


# --- checkpoints ------------------------------------------------------------------------------


def _valid_checkpoint() -> bytes:
    """A small, complete last.safetensors: weights, start state, training lines, resume state."""
    rng = np.random.default_rng(0)
    vocab = Vocab.from_text("\nabcdefgh")
    config = ModelConfig(vocab_size=len(vocab), layers=2, hidden=8, embed=4)
    weights = {k: rng.normal(size=s).astype(np.float32) for k, s in config.weight_shapes().items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.safetensors"
        save_checkpoint(path, weights=weights, model_config=config, vocab_json=vocab.to_json(),
                        train_config=TrainConfig().to_dict(), info={"line_oriented": True, "step": 3},
                        lines_blob=np.frombuffer(b"abc\nbad", np.uint8),
                        resume={"step": 3, "epoch": 0, "window": 3, "chars_seen": 99, "elapsed": 1.5,
                                "best_val_loss": 2.0, "last_val_loss": 2.1, "lr_scale": 1.0, "end": 1.0, "param_groups": [],
                                "corpus_digest": "abc", "world_size": 1},
                        resume_tensors={"optim.0.exp_avg": np.zeros(3, np.float32),
                                        "state.0": np.zeros((2, 4, 8), np.float32),
                                        "state.1": np.zeros((2, 4, 8), np.float32),
                                        "rng.cpu": np.zeros(5, np.uint8)},
                        start_state=[np.zeros((2, 8), np.float32)] * 2)
        return path.read_bytes()


VALID = _valid_checkpoint()
HEADER_LEN = struct.unpack("<Q", VALID[:8])[0]
HEADER = json.loads(VALID[8 : 8 + HEADER_LEN])
BODY = VALID[8 + HEADER_LEN :]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_header(draw) -> bytes:
    header = json.loads(json.dumps(HEADER))
    meta = header["__metadata__"]
    for _ in range(draw(st.integers(1, 4))):
        what = draw(st.sampled_from(["meta_json", "meta_field", "meta_raw", "dtype", "shape", "offsets", "drop",
                                     "vocab"]))
        if what in ("meta_json", "meta_field", "meta_raw"):
            key = draw(st.sampled_from(sorted(meta)))
            if what == "meta_raw":
                meta[key] = draw(st.text(max_size=40))
            elif what == "meta_json":
                meta[key] = json.dumps(draw(json_values))
            else:
                try:
                    obj = json.loads(meta[key])
                except ValueError:
                    obj = {}
                if isinstance(obj, dict) and obj:
                    field = draw(st.sampled_from(sorted(obj)))
                    obj[field] = draw(json_values)
                    meta[key] = json.dumps(obj)
        elif what == "vocab":
            try:
                vocab = json.loads(meta["vocab"])
                mapping = vocab["model"]["vocab"]
                ch = draw(st.sampled_from(sorted(mapping)))
            except (ValueError, TypeError, KeyError):
                continue  # already mutated out of shape
            mapping[draw(st.text(max_size=3))] = mapping.pop(ch) if draw(st.booleans()) else draw(json_values)
            meta["vocab"] = json.dumps(vocab)
        else:
            name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
            t = header[name]
            if what == "dtype":
                t["dtype"] = draw(st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "X"]))
            elif what == "shape":
                t["shape"] = draw(st.lists(st.integers(-2, 2**40), max_size=4))
            elif what == "offsets":
                t["data_offsets"] = draw(st.lists(st.integers(-1, len(BODY) + 10), min_size=2, max_size=2))
            else:
                del header[name]
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + BODY


@st.composite
def mutated_bytes(draw) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "length"]))
        if op == "flip" and data:
            i = draw(st.integers(0, min(len(data) - 1, 8 + HEADER_LEN + 64)))
            data[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(max_size=16))
        else:
            data[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
    return bytes(data)


def _read_checkpoint_fully(data: bytes, tmp: Path) -> None:
    from chargen.training.rundir import RunState

    path = tmp / "last.safetensors"
    path.write_bytes(data)
    try:
        ckpt = read_checkpoint(path, with_resume=True)
        ckpt.describe()
        if ckpt.resume is not None:
            RunState.from_checkpoint(ckpt)
        model = chargen.api.Model(ckpt)
        model.sample(n=1, length=5, seed=1)
    except ChargenError as exc:
        _one_line(exc)


@FUZZ
@given(data=st.one_of(mutated_header(), mutated_bytes()))
def test_checkpoint_reader(data):
    _read_checkpoint_fully(data, _TMP)


def test_the_valid_checkpoint_reads():
    _read_checkpoint_fully(VALID, _TMP)
    assert read_checkpoint(_TMP / "last.safetensors", with_resume=True).resume["step"] == 3


# --- corpora ----------------------------------------------------------------------------------

corpus_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b"abc", b"\n", b"\r\n", b"\r", b"\x00", b"\xc3\xa9", b"\xc3", b"\xa9", b"\xe2\x82",
                              b"\xe2\x82\xac", b"\xf0\x9f\x99\x82", b"\xff", b"\xef\xbb\xbf", b" ", b"x" * 200]),
             max_size=60).map(b"".join),
)


@FUZZ
@given(raw=corpus_bytes, chunk=st.integers(1, 16))
def test_corpus_reader(raw, chunk):
    from chargen.training.data import read_corpus

    path = _TMP / "corpus.txt"
    path.write_bytes(raw)
    try:
        enc = ingest([str(path)], cache_dir=_TMP / "cache", chunk_bytes=chunk)
    except ChargenError as exc:
        _one_line(exc)
        return
    # what the cache holds is what a one-shot read of the file gives
    assert enc.vocab.decode_ids(enc.ids) == read_corpus([str(path)]).text


# --- --config TOML ----------------------------------------------------------------------------

VALID_TOML = 'corpus = ["a.txt"]\nlayers = 2\nhidden = 64\nbatch-size = 8\ntime = "5m"\nlr = 3e-3\noverwrite = true\n'
toml_keys = st.sampled_from(["layers", "hidden", "embed", "dropout", "cell", "batch_size", "batch-size", "seq_len",
                             "lr", "time", "max_steps", "epochs", "patience", "seed", "device", "corpus", "out",
                             "overwrite", "quiet", "precision", "val_fraction", "grad_clip", "warmup", "nope"])
toml_values = st.sampled_from(['1', '-3', '0', '2.5', 'nan', 'inf', '"5m"', '"x"', 'true', '[1, 2]', '["a.txt"]',
                               '{a = 1}', '1e400', '"lstm"', '""', '9999999999999999999999'])


@st.composite
def toml_text(draw) -> str:
    if draw(st.booleans()):
        return draw(st.text(max_size=80))
    lines = VALID_TOML.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        lines.append(f"{draw(toml_keys)} = {draw(toml_values)}")
    return "\n".join(draw(st.permutations(lines))) + "\n"


@FUZZ
@given(text=toml_text())
def test_config_reader(text):
    from chargen.config import MODEL_KEYS, RunConfig, declared

    path = _TMP / "config.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))  # hypothesis text may hold lone surrogates
    try:
        options = load_toml_config(str(path))
        model = {k: v for k, v in options.items() if k in MODEL_KEYS}
        ModelConfig.from_dict({"vocab_size": 10, **model})
        TrainConfig.from_dict({k: v for k, v in options.items() if k not in MODEL_KEYS and k not in declared(RunConfig)})
    except ChargenError as exc:
        _one_line(exc)


# --- prompts ----------------------------------------------------------------------------------

_NAMES = chargen.load()


@FUZZ
@given(prompts=st.lists(st.text(max_size=12), min_size=1, max_size=4), lines=st.booleans())
def test_prompt_reader(prompts, lines):
    try:
        out = _NAMES.sample(n=2, prompt=prompts if len(prompts) > 1 else prompts[0], lines=lines, length=8, seed=3)
    except ChargenError as exc:
        _one_line(exc)
        return
    assert len(out) == 2 * len(prompts)


@pytest.mark.parametrize("raw", [b"Ma\n\xff\xfe\n", b"\xc3\n", b"Ka\r\nMo\r\n", b"\x00\n", b""])
def test_stdin_prompts_of_any_bytes(raw):
    from .conftest import run

    p = run(["sample", "-p", "-", "-n", "1", "--seed", "1"], input=raw)
    err = p.stderr.decode()
    assert "Traceback" not in err
    if p.returncode != 0:
        assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1, err


# --- regular expressions (`--regex`, and a server's client) ------------------------------------

_REGEX_PIECES = st.sampled_from(list("ab.()[]{}|*+?^$\\-,:=!<>#0123456789") +
                                ["(?=", "(?!", "(?<=", "(?:", "(?i)", "{2}", "{1,3}", "{0,}", "\\d", "\\w", "[^a]",
                                "{99}", "{4294967296}", "(" * 40, ")" * 40, ".*", "a{5}"])


@FUZZ
@given(pieces=st.lists(_REGEX_PIECES, max_size=16))
def test_regex_reader(pieces):
    """Any pattern: an automaton or one line of UsageError, never another exception or a warning
    (on a command's stderr), within seconds."""
    import time
    import warnings

    from chargen.sampling.constraints import Automaton, Constraints

    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Automaton(Constraints(regex="".join(pieces)), _NAMES.vocab)
    except ChargenError as exc:
        _one_line(exc)
    assert time.perf_counter() - start < 10
