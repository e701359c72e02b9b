"""`chargen score`: each line's log-probability, by the definition samples are drawn with, so a
sampled name scores its own logprob; the line loss is their mean; bad input is one Error: line."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

import chargen

from .conftest import Terminal, assert_clean_error, run


def test_a_sample_scores_its_own_logprob_and_the_mean_is_the_line_loss(trained_names):
    model = chargen.load(trained_names)
    drawn = list(model.samples(300, seed=5, temperature=1.0, top_k=None))
    scores = list(model.score([s.text for s in drawn], batch=64))  # several batches, lengths mixed
    np.testing.assert_allclose([s.logprob for s in scores], [s.logprob for s in drawn], rtol=1e-5, atol=1e-5)
    assert [s.chars for s in scores] == [s.n_chars for s in drawn]
    text = "\n".join(s.text for s in drawn) + "\n"
    loss = model.eval(text, lines=True)
    # The same sums; float32 rounding only: a CPU's BLAS may round a row differently in a batch of
    # another size (OpenBLAS on an AVX2-only EPYC: ~1e-7 per product), scores run 64 lines a batch
    # and eval 512. A line dropped or a character miscounted moves the mean by over 1e-3.
    assert -sum(s.logprob for s in scores) / sum(s.chars for s in scores) == pytest.approx(loss["loss"], rel=1e-6)


def test_likelier_names_score_higher():
    model = chargen.load()
    by_name = {s.text: s.logprob_per_char for s in model.score(["Maria", "Xqzkvw", "Anna", "Zzzzzzzz"])}
    assert min(by_name["Maria"], by_name["Anna"]) > max(by_name["Xqzkvw"], by_name["Zzzzzzzz"]) + 1.0


def test_score_command_streams_lines_and_reports_bad_input(tmp_path):
    (tmp_path / "c.txt").write_bytes("Anna\r\nMaria\n\nZoë\nBob".encode())
    proc = run(["score", "names", str(tmp_path / "c.txt"), "--skip-unknown"])
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.decode().splitlines()]
    assert [r[0] for r in rows] == ["Anna", "Maria", "", "Zoë", "Bob"] and all(len(r) == 4 for r in rows)
    assert rows[3][1] == "-inf" and float(rows[1][1]) < 0 and int(rows[1][3]) == 6
    proc = run(["score", "names", "--format", "jsonl"], input="Anna\nMaria\n".encode())  # stdin by default
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["text"] for r in records] == ["Anna", "Maria"] and math.isclose(float(rows[0][1]), records[0]["logprob"])
    assert_clean_error(run(["score", "names", str(tmp_path / "c.txt")]), "line 4 holds 'ë'", "skip-unknown")
    assert_clean_error(run(["score", "names", str(tmp_path / "nope.txt")]), "does not exist")
    assert_clean_error(run(["score", "names", "--format", "csv"], input=b"Anna\n"), "--format")
    (tmp_path / "mac.txt").write_bytes(b"Anna\rMaria\r")  # one line to wc and paste: one score, or what to do
    assert_clean_error(run(["score", "names", str(tmp_path / "mac.txt")]), "line 1 holds '\\r'", "tr '\\r' '\\n'")
    (tmp_path / "bad.txt").write_bytes(b"Anna\n\xff\xfe\n")
    assert_clean_error(run(["score", "names", str(tmp_path / "bad.txt")]), "UTF-8")
    for empty in (b"", b"\n"):  # no lines in, none out (a filter in a pipeline); an empty line is a line
        proc = run(["score", "names"], input=empty)
        assert proc.returncode == 0 and proc.stdout.decode().count("\n") == len(empty), proc.stderr


def test_score_answers_a_slow_writers_lines_as_they_come():
    """`tail -f log | chargen score`: a line is scored when it arrives, not when 2,048 have or the
    pipe ends (each read took 16 MB: nothing came out before the writer closed); a line whose
    newline has not come yet waits for it, and a last one without a newline is scored at the end."""
    import os
    import select
    import subprocess

    from .conftest import chargen_exe

    proc = subprocess.Popen([chargen_exe(), "score", "names"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def answer(seconds: float) -> bytes:  # what stdout gives within `seconds` (b"" if nothing)
        got = b""
        while select.select([proc.stdout], [], [], seconds)[0]:
            got += os.read(proc.stdout.fileno(), 1 << 16)
            if got.endswith(b"\n") or not got:
                break
        return got

    try:
        for text, line in ((b"A", b""), (b"nna\nMar", b"Anna\t"), (b"ia\n", b"Maria\t")):
            proc.stdin.write(text)
            proc.stdin.flush()  # the pipe stays open: only what has arrived can be answered
            got = answer(60 if line else 2)
            assert got.startswith(line) and got.count(b"\n") == (1 if line else 0), (text, got)
        proc.stdin.write(b"Luca")
        proc.stdin.close()
        assert proc.stdout.read().startswith(b"Luca\t") and proc.wait(60) == 0
    finally:
        proc.kill()
        proc.wait()


def test_score_over_http(tmp_path):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from chargen.config import ServeConfig
    from chargen.serve import build_app, load_models

    config = ServeConfig(max_n=3)
    served = load_models([("names", "names")], config)
    try:
        with TestClient(build_app(served, config), base_url="http://localhost") as client:
            r = client.post("/v1/score", json={"lines": ["Anna", "Zoë"], "skip_unknown": True})
            assert r.status_code == 200, r.text
            scores = r.json()["scores"]
            assert scores[0]["logprob"] == round(next(chargen.load().score(["Anna"])).logprob, 4)
            assert scores[1]["logprob"] is None and scores[1]["unknown"] == ["ë"]
            for body, needle in [({"lines": ["Zoë"]}, "line 1 holds"), ({"lines": "Anna"}, "list of text"),
                                 ({"lines": ["a"] * 4}, "limit of 3"),
                                 ({"lines": ["Anna", "Anna\nBob"]}, "line 2 holds a newline"), ({}, "'lines' is required")]:
                r = client.post("/v1/score", json=body)
                assert r.status_code == 400 and needle in r.json()["error"], r.text
    finally:
        for s in served:
            s.batcher.close()


def test_lines_typed_at_a_terminal_are_scored_as_they_are_entered():
    """`chargen score names` at a terminal answers each line on Enter (it read until Ctrl-D, so
    a user typing a name saw nothing and took it for hung); Ctrl-D ends it with exit code 0."""
    with Terminal(["score", "names"]) as term:
        term.shown_until(rb"Enter to score it; Ctrl-D ends")
        for name in (b"Anna", b"Mxrqa"):  # each answered while the input is still open
            term.type(name + b"\n")
            assert float(term.shown_until(name + rb"\t(-[0-9.]+)\t").group(1)) < 0
        term.type(b"\x04")
        assert term.ended() == 0
    with Terminal(["score", "names"]) as term:  # a line it cannot score is said, and the next one read
        term.type(b"Zo\xc3\xab\nAnna\n")
        term.shown_until(rb"(?s)Error: 'Zo\xc3\xab' holds '\xc3\xab', not in the model's vocabulary.*Anna\t-7.9985")
        term.type(b"\x04")
        assert term.ended() == 1
