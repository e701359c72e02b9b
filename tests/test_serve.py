"""`chargen serve`: the API against the app (httpx), batching, errors, security, and the command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="chargen serve needs the serve extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx", reason="the API tests need httpx: pip install -e '.[test]'")

import chargen  # noqa: E402
from chargen.sampling.batching import Batcher  # noqa: E402
from chargen.config import ServeConfig
from chargen.serve import build_app, load_models  # noqa: E402

from .conftest import run, start_server  # noqa: E402


def make_app(trained_names: Path, trained_prose: Path, **limits):
    config = ServeConfig(**limits)
    served = load_models([("names", "names"), ("tiny", str(trained_names)), ("prose", str(trained_prose))], config)
    return build_app(served, config), served


@pytest.fixture(scope="module")
def app(trained_names, trained_prose):
    application, served = make_app(trained_names, trained_prose)
    yield application
    for s in served:
        s.batcher.close()


@pytest.fixture
def client(app):
    from starlette.testclient import TestClient

    with TestClient(app, base_url="http://localhost") as c:
        yield c


def post(client, path: str, body, **kw):
    return client.post(path, json=body, **kw)


def records(model, *args, constrained=False, **kw):
    return [s.record(constrained) for s in model.samples(*args, **kw)]


def assert_same_records(got: list[dict], expected: list[dict]) -> None:
    """The same samples; their log-probabilities to float32 rounding (the server's worker process
    steps them in other batches than the caller's process, and a record rounds to 4 decimals)."""
    assert [r["text"] for r in got] == [r["text"] for r in expected]
    for a, b in zip(got, expected):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if isinstance(value, float):
                assert a[key] == pytest.approx(value, abs=2e-4), key
            else:
                assert a[key] == value, key


# --- what the API answers ------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    {"n": 20, "seed": 3},
    {"n": 12, "seed": 4, "prompt": "Ma", "temperature": 1.3, "top_k": 5},
    {"n": 8, "seed": 5, "prompt": ["Jo", "El"], "unique": True, "novel": True, "top_p": 0.9},
    {"n": 6, "seed": 6, "ends_with": "a", "max_len": 7, "contains": ["r"]},
    {"n": 5, "seed": 7, "regex": "[A-Z][a-z]*(el|ia)", "guided": True, "exclude": ["Mariel"]},
])
def test_sample_gives_what_the_python_api_gives_for_the_same_seed(client, body):
    model = chargen.load()
    r = post(client, "/v1/sample", body)
    assert r.status_code == 200, r.text
    data = r.json()
    constrained = any(k in body for k in ("ends_with", "contains", "regex", "min_len", "max_len"))
    options = {k: v for k, v in body.items() if k not in ("n", "prompt")}
    assert data["model"] == "names"
    assert_same_records(data["samples"], records(model, body["n"], body.get("prompt", ""), constrained=constrained,
                                                 **options))
    assert data["accepted"] == len(data["samples"]) and data["draws"] >= data["accepted"]


def test_sample_matches_the_installed_cli_for_the_same_seed(client):
    cli = run(["sample", "-n", "15", "--seed", "11", "-p", "Ka", "--max-len", "7", "--format", "jsonl"])
    assert cli.returncode == 0, cli.stderr
    expected = [json.loads(line) for line in cli.stdout.decode().splitlines()]
    r = post(client, "/v1/sample", {"n": 15, "seed": 11, "prompt": "Ka", "max_len": 7})
    assert_same_records(r.json()["samples"], expected)


def test_top_eval_and_models(client, trained_names):
    model = chargen.load()
    r = post(client, "/v1/top", {"n": 5, "ends_with": "a", "max_len": 6})
    assert r.status_code == 200, r.text
    assert r.json()["samples"] == [s.record() for s in model.top(5, ends_with="a", max_len=6)]
    text = "Mara\nTeli\nBodon\n"
    r = post(client, "/v1/eval", {"model": "tiny", "text": text})
    assert r.status_code == 200
    assert r.json()["loss"] == pytest.approx(chargen.load(trained_names).eval(text)["loss"], abs=1e-9)

    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["names", "tiny", "prose"]
    tiny = models[1]
    assert tiny["line_oriented"] and tiny["parameters"] > 0 and tiny["training_lines"] == 400
    assert len(tiny["curve"]) >= 2 and all(len(p) == 2 for p in tiny["curve"])  # from the run's metrics.jsonl
    assert "path" not in json.dumps(models)  # clients never see the server's files
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["models"] == ["names", "tiny", "prose"]


def test_prose_streams_as_server_sent_events_and_matches_sampling(client, trained_prose):
    body = {"model": "prose", "prompt": "the ", "seed": 9, "length": 300, "temperature": 1.0}
    with client.stream("POST", "/v1/stream", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = []
        for block in r.read().decode().split("\n\n"):
            if block.strip():
                kind, data = block.split("\n")
                events.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    kinds = [k for k, _ in events]
    assert kinds[-2:] == ["sample", "done"] and set(kinds[:-2]) == {"text"} and len(kinds) > 3
    streamed = "".join(d["text"] for k, d in events if k == "text")
    expected = chargen.load(trained_prose).sample(1, "the ", seed=9, length=300, temperature=1.0)[0]
    assert streamed == expected == events[-2][1]["text"]
    same = post(client, "/v1/sample", {**body, "n": 1}).json()["samples"][0]
    assert same["text"] == expected


def test_a_line_model_streams_one_line_per_event(client):
    with client.stream("POST", "/v1/stream", json={"n": 4, "seed": 2}) as r:
        body = r.read().decode()
    texts = [json.loads(b.split("\ndata: ")[1])["text"] for b in body.split("\n\n") if b.startswith("event: text")]
    assert texts == chargen.load().sample(4, seed=2)


# --- batching ------------------------------------------------------------------------------------


def test_concurrent_requests_are_sampled_together_with_unchanged_results(trained_names, trained_prose):
    """32 requests sent at once take far fewer rounds and network steps than one by one, and each
    gets exactly what it gets alone."""
    bodies = [{"model": "names", "n": 10, "seed": i, "prompt": ["", "Ma", "Jo"][i % 3],
               "temperature": [0.8, 1.0][i % 2], **({"unique": True} if i % 4 == 0 else {})} for i in range(32)]

    async def send_all(application, together: bool):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            if together:
                responses = await asyncio.gather(*(c.post("/v1/sample", json=b) for b in bodies))
            else:
                responses = [await c.post("/v1/sample", json=b) for b in bodies]
        return [r.json()["samples"] for r in responses]

    stats = {}
    results = {}
    for together in (False, True):
        application, served = make_app(trained_names, trained_prose, window=0.02)
        results[together] = asyncio.run(send_all(application, together))
        stats[together] = served[0].batcher.stats
        for s in served:
            s.batcher.close()
    # The same samples; log-probabilities agree to float32 rounding (a row's matrix product may be
    # summed in another order in a bigger batch, as in `chargen sample` with another -n).
    assert [[s["text"] for s in r] for r in results[True]] == [[s["text"] for s in r] for r in results[False]]
    for together, alone in zip(results[True], results[False]):
        assert [s["logprob"] for s in together] == pytest.approx([s["logprob"] for s in alone], abs=5e-4)
    assert stats[True].requests == stats[False].requests == 32
    # One by one, a step advances one request's rows; together, most of them at once.
    alone, together = stats[False].to_dict(), stats[True].to_dict()
    assert together["mean_batch"] > 4 * alone["mean_batch"], (together, alone)
    assert stats[True].steps * 3 < stats[False].steps, (together, alone)


def test_the_batcher_alone_matches_the_python_api():
    model = chargen.load()
    batcher = Batcher(model.stepper, model.vocab, window=0.01)
    try:
        options = [dict(n=7, seed=i, prompt="Ka" if i % 2 else "", ends_with="a" if i % 3 == 0 else None,
                        guided=i % 5 == 0, temperature=0 if i == 7 else 0.9) for i in range(20)]
        futures = [batcher.submit(model.drawings(**o)) for o in options]
        for future, o in zip(futures, options):
            assert [s.text for s in future.result(timeout=30)] == model.sample(**o)
        failing = batcher.submit(model.drawings(n=5, temperature=0, unique=True))  # greedy: one distinct sample
        with pytest.raises(chargen.SamplingError):
            failing.result(timeout=30)
    finally:
        batcher.close()


def test_requests_that_end_together_wake_their_event_loop_once():
    """An event loop's requests (a server's) are handed back together: the ones that end in the
    same step of the batch cost the loop one wake-up, not one each; each still gets its own
    samples (as the Python API draws them), and an error stays its own request's."""
    model = chargen.load()
    batcher = Batcher(model.stepper, model.vocab, window=0.05)  # the 8 requests join in one step
    options = [dict(n=3, temperature=0, prompt="Mar")] * 4 + [dict(n=5, seed=i) for i in range(3)]

    async def ask() -> tuple[list, int]:
        loop = asyncio.get_running_loop()
        calls = []
        wakes = loop.call_soon_threadsafe

        def counted(*args):
            calls.append(args)
            return wakes(*args)

        loop.call_soon_threadsafe = counted
        futures = [batcher.submit(model.drawings(**o), loop) for o in options]
        futures.append(batcher.submit(model.drawings(n=5, temperature=0, unique=True), loop))  # fails
        done = await asyncio.gather(*futures, return_exceptions=True)
        return done, len(calls)

    try:
        done, wakes = asyncio.run(ask())
    finally:
        batcher.close()
    for samples, o in zip(done, options):
        assert [s.text for s in samples] == model.sample(**o)
    assert isinstance(done[-1], chargen.SamplingError)
    # The 4 greedy requests end in the same step; the others, their error included, in a few more.
    assert wakes < len(done) - 3, wakes


def test_a_long_constrained_request_does_not_hold_up_the_batch():
    """A request under a rare exact constraint runs one round of its adaptive sampler between two
    steps of the batch (it used to run all its rounds at once), so a plain request that arrives
    with it is answered first, and each gets what it gets alone."""
    model = chargen.load()
    batcher = Batcher(model.stepper, model.vocab, window=0.05)  # (in this thread: its steps come in order)
    slow = dict(n=2000, seed=3, contains="th", min_len=9)  # some 28 rounds of 4,096 draws
    quick = dict(n=10, seed=4)  # some 15 steps
    finished = []
    try:
        futures = {name: batcher.submit(model.drawings(**o)) for name, o in (("slow", slow), ("quick", quick))}
        for name, future in futures.items():
            future.add_done_callback(lambda _, name=name: finished.append(name))
        results = {name: [s.text for s in f.result(timeout=120)] for name, f in futures.items()}
    finally:
        batcher.close()
    assert finished == ["quick", "slow"]
    assert results["slow"] == model.sample(**slow) and results["quick"] == model.sample(**quick)


# --- errors: 4xx JSON with one line, never a traceback ---------------------------------------------


@pytest.mark.parametrize("send, status, needle", [
    (lambda c: c.post("/v1/sample", content=b"{not json", headers={"Content-Type": "application/json"}), 400, "not valid JSON"),
    (lambda c: c.post("/v1/sample", content=b"\xff\xfe", headers={"Content-Type": "application/json"}), 400, "not valid JSON"),
    (lambda c: post(c, "/v1/sample", [1, 2]), 400, "must be a JSON object"),
    (lambda c: post(c, "/v1/sample", {"n": 3, "num_samples": 3}), 400, "unknown field(s) 'num_samples'"),
    (lambda c: post(c, "/v1/sample", {"n": "3"}), 400, "'n' must be a whole number"),
    (lambda c: post(c, "/v1/sample", {"n": True}), 400, "'n' must be a whole number"),
    (lambda c: post(c, "/v1/sample", {"n": 0}), 400, "'n' must be at least 1"),
    (lambda c: post(c, "/v1/sample", {"temperature": -1}), 400, "'temperature' must be 0"),
    (lambda c: post(c, "/v1/sample", {"top_p": 1.5}), 400, "'top_p' must be in (0, 1]"),
    (lambda c: post(c, "/v1/sample", {"n": 5000}), 400, "limit of 1000 samples"),
    (lambda c: post(c, "/v1/sample", {"length": 10**6}), 400, "limit of 2000"),
    (lambda c: post(c, "/v1/sample", {"prompt": "Ma€"}), 400, "not in the model's vocabulary"),
    (lambda c: post(c, "/v1/sample", {"min_len": 9, "max_len": 3}), 400, "'min_len' 9 is above 'max_len' 3"),
    (lambda c: post(c, "/v1/sample", {"regex": "(a"}), 400, "regex"),
    (lambda c: post(c, "/v1/sample", {"regex": ".*a.{20}"}), 400, "automaton states"),  # not a thread spun for hours
    (lambda c: post(c, "/v1/top", {"regex": "a{1000000}"}), 400, "automaton states"),
    (lambda c: post(c, "/v1/sample", {"regex": "(" * 5000 + "a" + ")" * 5000}), 400, "nests its groups too deeply"),
    (lambda c: post(c, "/v1/sample", {"contains": "a" * 500_000}), 400, "automaton states"),  # no table of 500,000 rows
    (lambda c: post(c, "/v1/sample", {"exclude": "/etc/passwd"}), 400, "'exclude' must be a list of text"),
    (lambda c: post(c, "/v1/sample", {"n": 5, "temperature": 0, "unique": True}), 422, "produced only 1 of 5"),
    (lambda c: post(c, "/v1/sample", {"model": "nope"}), 404, "no model named \"nope\""),
    (lambda c: post(c, "/v1/sample", {"model": "../../etc/passwd"}), 404, "no model named"),
    (lambda c: post(c, "/v1/top", {"temperature": 1}), 400, "unknown field(s) 'temperature'"),
    (lambda c: post(c, "/v1/eval", {"model": "tiny"}), 400, "'text' is required"),
    (lambda c: post(c, "/v1/eval", {"model": "tiny", "text": "Zz€"}), 400, "not in"),
    (lambda c: post(c, "/v1/stream", {"model": "prose", "n": 3}), 400, "one sample"),
    (lambda c: post(c, "/v1/stream", {"prompt": ["a", "b"]}), 400, "'prompt' must be text"),
    (lambda c: c.post("/v1/sample", content=b'{"n": 1}'), 415, "Content-Type: application/json"),
    (lambda c: c.post("/v1/sample", content=b" " * (2 << 20), headers={"Content-Type": "application/json"}), 413, "limit"),
    (lambda c: c.get("/v1/sample"), 405, "GET is not allowed"),
    (lambda c: c.get("/v1/nothing"), 404, "no such endpoint"),
    (lambda c: c.get("/../../etc/passwd"), 404, "no such endpoint"),
])
def test_bad_requests_get_one_line_json_errors(client, send, status, needle):
    r = send(client)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert needle in error and "\n" not in error and "Traceback" not in r.text and "File \"" not in r.text


def test_a_request_past_the_draw_limit_is_a_422_and_others_go_on(trained_names, trained_prose):
    """A rare constraint redraws: past --max-draws the request ends, the batch is not held."""
    from starlette.testclient import TestClient

    application, served = make_app(trained_names, trained_prose, max_draws=500)
    with TestClient(application, base_url="http://localhost") as c:
        r = c.post("/v1/sample", json={"n": 200, "seed": 1, "contains": "ss", "min_len": 8})
        assert r.status_code == 422 and "500 draws, this server's limit" in r.json()["error"], r.text
        ok = c.post("/v1/sample", json={"n": 20, "seed": 1})
        assert ok.status_code == 200 and len(ok.json()["samples"]) == 20
    for s in served:
        s.batcher.close()


def test_plain_requests_asked_again_are_answered_from_samples_drawn_ahead(trained_names, trained_prose):
    """Unseeded plain requests asked again and again are answered from samples drawn ahead
    (chargen.sampling.ahead): they follow the model's distribution at the request's settings as
    samples drawn when they come do (chi-square on the first letters against 20,000 fresh samples at
    the same temperature; against another temperature the same test fails); a seeded request, or
    one under constraints, is drawn as it comes (the command's samples); --ahead 0 draws every one."""
    from starlette.testclient import TestClient

    from .test_constraints import chi_square_fits, counted

    body = {"n": 10, "temperature": 0.7}  # the bundled names model
    got: dict[int, list[dict]] = {}
    draws: dict[int, int] = {}
    for ahead in (4096, 0):
        application, served = make_app(trained_names, trained_prose, ahead=ahead)
        try:
            with TestClient(application, base_url="http://localhost") as c:
                got[ahead] = []
                for _ in range(100):
                    r = post(c, "/v1/sample", body)
                    assert r.status_code == 200, r.text
                    data = r.json()
                    # (draws can pass 10: line mode redraws an empty sample, in a request's own drawing
                    # or in the stock's, whose draws its samples share)
                    assert data["draws"] >= data["accepted"] == len(data["samples"]) == 10
                    got[ahead] += data["samples"]
                    draws[ahead] = draws.get(ahead, 0) + data["draws"]
                stocked = c.get("/v1/health").json()["ahead"]["plain"]
                for other in ({**body, "seed": 3}, {**body, "ends_with": "a"}, {**body, "unique": True}):
                    assert post(c, "/v1/sample", other).status_code == 200
                assert c.get("/v1/health").json()["ahead"]["plain"] == stocked  # drawn as they came
                seeded = post(c, "/v1/sample", {**body, "seed": 3}).json()["samples"]
        finally:
            for s in served:
                s.batcher.close()
        model = chargen.load()
        assert_same_records(seeded, records(model, 10, temperature=0.7, seed=3))
        assert draws[ahead] <= 1010  # (a redraw is rare: empty names)
        if ahead:
            assert stocked["hits"] + stocked["waited"] == 99 and stocked["misses"] == 0  # all but the first
        else:
            assert stocked == {"hits": 0, "waited": 0, "misses": 0, "drawn": 0}
    first = counted(r["text"][:1] for r in got[4096][10:])  # (the first request's were drawn as it came)
    assert chi_square_fits(first, counted(t[:1] for t in model.sample(20000, temperature=0.7, seed=1)))[0]
    hotter = counted(t[:1] for t in model.sample(20000, temperature=1.2, seed=1))
    assert not chi_square_fits(first, hotter)[0]  # the test tells another temperature apart
    scores = {s.text: s.logprob for s in model.score([r["text"] for r in got[4096][10:60]])}
    assert all(r["logprob"] == pytest.approx(scores[r["text"]], abs=2e-4) for r in got[4096][10:60])


def test_requests_waiting_on_a_stock_whose_drawings_fail_draw_their_own(trained_names, trained_prose, monkeypatch):
    """Should a drawing for a stock fail (here: every drawing of more than 100 samples, as a stock's
    first are), the requests waiting on it draw their own samples, and so do the later ones:
    answered all the same, counted as misses."""
    from starlette.testclient import TestClient

    application, served = make_app(trained_names, trained_prose)
    model = served[0].model
    drawings = model.drawings

    def failing(n, *args, **kw):
        if n > 100:  # a stock's drawing (256 samples), not a request's own (10)
            raise chargen.SamplingError("the stock's drawing failed")
        return drawings(n, *args, **kw)

    monkeypatch.setattr(model, "drawings", failing)
    try:
        with TestClient(application, base_url="http://localhost") as c:
            for _ in range(5):
                r = post(c, "/v1/sample", {"n": 10})
                assert r.status_code == 200 and len(r.json()["samples"]) == 10, r.text
            ahead = c.get("/v1/health").json()["ahead"]["plain"]
    finally:
        for s in served:
            s.batcher.close()
    assert ahead["misses"] == 4 and ahead["hits"] == ahead["waited"] == 0  # (the first: no stock yet)


def test_json_endpoints_answer_as_starlette_would(client):
    """The JSON endpoints answer past Starlette's layers (chargen.serve.JsonEndpoint): the same
    bytes as its JSONResponse (non-ASCII text as UTF-8, compact), the same headers, and a
    Starlette route's 405 for another method."""
    from starlette.responses import JSONResponse

    for path, body in (("/v1/sample", {"n": 5, "seed": 3, "prompt": "Z"}), ("/v1/eval", {"model": "tiny", "text": "anna"}),
                       ("/v1/top", {"n": 3}), ("/v1/score", {"lines": ["Zoë", "ann"], "skip_unknown": True})):
        r = post(client, path, body)
        assert r.status_code == 200, r.text
        assert r.content == JSONResponse(r.json()).body
        assert r.headers["content-type"] == "application/json" and r.headers["cache-control"] == "no-store"
        assert int(r.headers["content-length"]) == len(r.content)
        other = client.put(path, json=body)
        assert other.status_code == 405 and other.headers["allow"] == "POST"
    refused = post(client, "/v1/sample", {"n": 1, "prompt": "Zoë"})  # an error names the character
    assert refused.status_code == 400 and refused.content == JSONResponse(refused.json()).body
    assert "ë" in refused.content.decode("utf-8")


def test_a_chunked_body_over_the_limit_is_refused(client):
    def chunks():
        for _ in range(40):
            yield b" " * 65536

    r = client.post("/v1/sample", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_an_internal_error_is_a_500_without_the_stack(app, monkeypatch, capsys):
    from starlette.testclient import TestClient

    client = TestClient(app, base_url="http://localhost", raise_server_exceptions=False)
    served = app.state.server.models["names"]

    def boom(*args, **kwargs):
        raise RuntimeError("secret detail /home/user/.ssh/id_rsa")

    monkeypatch.setattr(served.model, "drawings", boom)
    r = post(client, "/v1/sample", {"n": 1})
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (see the server's log)"}
    assert "secret" not in r.text and "Traceback" not in r.text
    assert "secret detail" in capsys.readouterr().err  # the server's own log has it


def test_too_many_streams_is_a_429(client, app):
    server = app.state.server
    server.streams = server.config.max_streams
    try:
        r = post(client, "/v1/stream", {"model": "prose"})
    finally:
        server.streams = 0
    assert r.status_code == 429 and "limit" in r.json()["error"]


def test_a_token_guards_the_api_but_not_the_health_check(trained_names, trained_prose):
    from starlette.testclient import TestClient

    application, served = make_app(trained_names, trained_prose, token="s3cret")
    with TestClient(application, base_url="http://localhost") as c:
        assert c.get("/v1/health").status_code == 200
        assert c.get("/").status_code == 200  # the page itself holds no data
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = c.post("/v1/sample", json={"n": 1}, headers=headers)
            assert r.status_code == 401 and "token" in r.json()["error"], headers
            assert c.get("/v1/models", headers=headers).status_code == 401
        ok = c.post("/v1/sample", json={"n": 2, "seed": 1}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and len(ok.json()["samples"]) == 2
    for s in served:
        s.batcher.close()


def test_a_localhost_server_refuses_other_host_names(client):
    r = client.get("/v1/health", headers={"Host": "attacker.example:8000"})
    assert r.status_code == 421 and "localhost" in r.json()["error"]
    assert client.get("/v1/health", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    assert client.get("/v1/health", headers={"Host": "[::1]:8000"}).status_code == 200


def test_the_page_and_its_assets_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/playground.js"' in page.text and "http" not in page.text.split("<body>")[1]  # no CDN
    assert client.get("/playground.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/playground.css").status_code == 200


# --- the command ---------------------------------------------------------------------------------


def test_the_command_serves_and_stops_cleanly_on_sigterm_after_requests_in_flight(trained_names):
    proc, url = start_server("-c", "names", "-c", f"mine={trained_names}")
    try:
        assert httpx.get(url + "/v1/health").json()["models"] == ["names", "mine"]
        r = httpx.post(url + "/v1/sample", json={"model": "mine", "n": 3, "seed": 1})
        assert [s["text"] for s in r.json()["samples"]] == chargen.load(trained_names).sample(3, seed=1)
        # A slow request in flight when SIGTERM arrives still gets its answer.
        slow = {}
        body = {"n": 1000, "seed": 2, "contains": "th", "min_len": 7}
        t = threading.Thread(target=lambda: slow.update(r=httpx.post(url + "/v1/sample", json=body, timeout=60)))
        t.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert slow["r"].status_code == 200 and len(slow["r"].json()["samples"]) == 1000
        assert proc.wait(30) == 0
        err = proc.stderr.read().decode()
        assert "Traceback" not in err and "stopped" in err
        assert proc.stdout.read() == b""  # nothing on stdout
    finally:
        proc.kill()


def test_the_command_runs_the_slow_requests_in_a_process_of_their_own(trained_names):
    """Started with one thread, `chargen serve` forks a worker for its batches and a side process
    for the requests whose numpy and Python would hold the event loop's GIL: samples under
    constraints, /v1/top, /v1/score and /v1/eval. Those give what the Python API gives (a seed's
    samples, a plain request beside them too), past --max-draws a 422, a bad pattern a 400, and
    their CPU time is the side process's; unseeded samples share a warm tree there, and those asked
    again come from samples drawn ahead there; SIGTERM stops the server and both processes."""
    proc, url = start_server("-c", "names", "--max-draws", "5000")

    def children() -> list[int]:
        return [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]

    def cpu_seconds(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    try:
        assert len(children()) == 2
        model = chargen.load()
        rng = np.random.default_rng(0)  # names that share few prefixes (scoring steps each distinct one once)
        lines = ["".join(rng.choice(list("Aeilmnorst"), size=8)).capitalize() for _ in range(999)] + ["Zoë"]
        before = {pid: cpu_seconds(pid) for pid in [proc.pid, *children()]}
        for _ in range(10):
            scores = httpx.post(url + "/v1/score", json={"lines": lines, "skip_unknown": True}, timeout=60).json()["scores"]
        spent = {pid: cpu_seconds(pid) - t for pid, t in before.items()}
        assert_same_records(scores, [s.record() for s in model.score(lines, skip_unknown=True)])
        assert max(spent[pid] for pid in children()) > max(0.15, 3 * spent[proc.pid]), spent
        top = httpx.post(url + "/v1/top", json={"n": 5, "ends_with": "a", "max_len": 6}, timeout=60)
        assert_same_records(top.json()["samples"], [s.record() for s in model.top(5, ends_with="a", max_len=6)])
        text = "Mara\nTeli\nBodon\n"
        assert httpx.post(url + "/v1/eval", json={"text": text}, timeout=60).json()["loss"] == \
            pytest.approx(model.eval(text)["loss"], abs=1e-6)
        bad = httpx.post(url + "/v1/top", json={"regex": "a{1000000}"}, timeout=60)
        assert bad.status_code == 400 and "automaton states" in bad.json()["error"]
        model = chargen.load()
        for body in ({"n": 20, "seed": 3, "regex": "[A-Z][a-z]*(el|ia)"}, {"n": 5, "seed": 4, "ends_with": "a", "prompt": "Ma"},
                     {"n": 10, "seed": 5}):
            r = httpx.post(url + "/v1/sample", json=body, timeout=60)
            options = {k: v for k, v in body.items() if k not in ("n", "prompt")}
            assert [s["text"] for s in r.json()["samples"]] == model.sample(body["n"], body.get("prompt", ""), **options)
        # Unseeded requests: a warm tree. Those 1e-9 apart in temperature (other settings) each start
        # a tree; those alike need fewer draws as their tree learns (20 runs: 2.0-3.7x; about 1
        # without warm trees).
        cold = [httpx.post(url + "/v1/sample", json={"n": 10, "contains": "th", "temperature": 0.8 + k * 1e-9},
                           timeout=60).json() for k in range(1, 9)]
        warm = [httpx.post(url + "/v1/sample", json={"n": 10, "contains": "th"}, timeout=60).json() for _ in range(30)]
        assert all(len(u["samples"]) == 10 and all("th" in s["text"] for s in u["samples"]) for u in cold + warm)
        assert np.mean([u["draws"] for u in cold]) > 1.4 * np.mean([u["draws"] for u in warm[-10:]])
        # Those asked again are answered from samples drawn ahead in the side process, where the
        # draw limit lets a drawing of them end ("th": 256 of them would take more than 5,000 draws,
        # so after that drawing failed its requests draw their own)
        stocked = httpx.get(url + "/v1/health", timeout=60).json()["ahead"]["constrained"]
        assert stocked["misses"] == 29 and stocked["hits"] == stocked["waited"] == 0, stocked
        again = [httpx.post(url + "/v1/sample", json={"n": 10, "ends_with": "a", "max_len": 7}, timeout=60).json()
                 for _ in range(20)]
        assert all(len(u["samples"]) == 10 and all(s["text"].endswith("a") and len(s["text"]) <= 7 for s in u["samples"])
                   and u["draws"] >= u["accepted"] == 10 for u in again)
        stocked = httpx.get(url + "/v1/health", timeout=60).json()["ahead"]["constrained"]
        assert stocked["hits"] + stocked["waited"] == 19 and stocked["misses"] == 29, stocked
        far = httpx.post(url + "/v1/sample", json={"n": 200, "seed": 1, "contains": "zq"}, timeout=60)
        assert far.status_code == 422 and "5,000 draws, this server's limit" in far.json()["error"]
        bad = httpx.post(url + "/v1/sample", json={"n": 2, "regex": "("}, timeout=60)
        assert bad.status_code == 400 and "regex" in bad.json()["error"]
        pids = children()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        err = proc.stderr.read().decode()
        assert "Traceback" not in err and "side process ended" not in err, err  # (a stop is no such news)
        time.sleep(0.5)
        assert not any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
                       for pid in pids)
    finally:
        proc.kill()


def test_the_server_does_the_side_processs_work_itself_once_it_has_ended(trained_names):
    """The side process killed (for memory, say): the server says so once on stderr and answers
    the requests it ran from its own process, with what the Python API gives, and still stops
    cleanly."""
    proc, url = start_server("-c", "names")
    try:
        side = max(int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())
        body = {"n": 10, "seed": 3, "regex": "[A-Z][a-z]*(el|ia)"}
        assert httpx.post(url + "/v1/sample", json=body, timeout=60).status_code == 200
        os.kill(side, signal.SIGKILL)
        time.sleep(0.5)
        model = chargen.load()
        r = httpx.post(url + "/v1/sample", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert [s["text"] for s in r.json()["samples"]] == model.sample(10, seed=3, regex=body["regex"])
        top = httpx.post(url + "/v1/top", json={"n": 3, "ends_with": "a"}, timeout=60)
        assert top.status_code == 200 and top.json()["samples"] == [s.record() for s in model.top(3, ends_with="a")]
        assert httpx.post(url + "/v1/score", json={"lines": ["Mara"]}, timeout=60).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        err = proc.stderr.read().decode()
        assert err.count("the side process ended") == 1 and "Traceback" not in err, err
    finally:
        proc.kill()


def test_the_command_stops_on_ctrl_c(trained_names):
    proc, url = start_server()
    try:
        assert httpx.post(url + "/v1/sample", json={"n": 2}).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert "Traceback" not in proc.stderr.read().decode()
    finally:
        proc.kill()


@pytest.mark.parametrize("args, needle", [
    (["-c", "nowhere.safetensors"], "does not exist"),
    (["-c", "names", "-c", "names"], "two models are named 'names'"),
    (["-c", "a b=names"], "not a short name"),
    (["--max-n", "0"], "--max-n must be at least 1"),
    (["--token", " "], "--token is empty"),
])
def test_bad_serve_options_are_one_error_line(args, needle):
    from .conftest import assert_clean_error

    assert_clean_error(run(["serve", "--port", "0", *args], timeout=30), needle)


def test_a_taken_port_is_one_error_line():
    import socket

    from .conftest import assert_clean_error

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_clean_error(run(["serve", "--port", str(port)], timeout=30), f"cannot listen on 127.0.0.1:{port}")


def test_exposed_without_a_token_warns_and_answers_any_host_name():
    notes: list[str] = []
    proc, url = start_server("--host", "0.0.0.0", notes=notes)
    try:
        port = url.rsplit(":", 1)[1]
        r = httpx.get(f"http://127.0.0.1:{port}/v1/health", headers={"Host": f"names.example:{port}"})
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert any("warning: serving on 0.0.0.0 without --token" in n for n in notes), notes


def test_serving_never_imports_torch(trained_names):
    code = ("import sys; from chargen.config import ServeConfig; from chargen.serve import build_app, load_models; "
            f"app = build_app(load_models([('names', 'names'), ('mine', {str(trained_names)!r})], ServeConfig()), ServeConfig()); "
            "import starlette.testclient as t; c = t.TestClient(app, base_url='http://localhost'); "
            "assert c.post('/v1/sample', json={'n': 3}).status_code == 200; "
            "assert 'torch' not in sys.modules; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert p.stdout.strip() == b"ok", p.stderr.decode()


def test_export_downloads_a_model_by_name_never_a_path(client, trained_names):
    page = client.get("/v1/export?model=names&format=html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'filename="names.html"' in page.headers["content-disposition"]
    assert "const MODEL = " in page.text and "new Worker" in page.text
    module = client.get("/v1/export?model=tiny&format=js")
    assert module.status_code == 200 and module.text.rstrip().endswith("export { sample, sampleRecords, top, info, backend, ChargenError };")
    for query, status in [("model=/etc/passwd", 404), (f"model={trained_names}", 404), ("format=exe", 400)]:
        r = client.get("/v1/export?" + query)
        assert r.status_code == status and set(r.json()) == {"error"}, r.text


def test_a_labelled_model_takes_a_label_everywhere(trained_labels):
    from starlette.testclient import TestClient

    config = ServeConfig()
    served = load_models([("kinds", str(trained_labels))], config)
    model = chargen.load(str(trained_labels))
    try:
        with TestClient(build_app(served, config), base_url="http://localhost") as c:
            info = c.get("/v1/models").json()["models"][0]
            assert info["labels"]["names"] == ["abc", "xyz"] and info["labels"]["languages"] == {}  # none is a language
            body = {"model": "kinds", "n": 20, "seed": 3, "label": "abc=0.4,xyz=0.6", "max_len": 5}
            got = post(c, "/v1/sample", body).json()["samples"]
            assert_same_records(got, records(model, 20, seed=3, label="abc=0.4,xyz=0.6", max_len=5, constrained=True))
            assert {r["label"] for r in got} == {"abc", "xyz"}
            as_mapping = post(c, "/v1/sample", {**body, "label": {"abc": 0.4, "xyz": 0.6}}).json()["samples"]
            assert as_mapping == got  # a blend as a JSON object is the blend its text writes
            wrong = post(c, "/v1/score", {"model": "kinds", "lines": ["abc"], "label": {"abc": "x"}})
            assert wrong.status_code == 400 and "'label' must map text to numbers" in wrong.json()["error"]
            top = post(c, "/v1/top", {"model": "kinds", "n": 5, "label": "xyz"}).json()["samples"]
            assert [r["text"] for r in top] == [s.text for s in model.top(5, label="xyz")]
            assert all(r["label"] == "xyz" and set(r["text"]) <= set("xyz") for r in top)
            scores = post(c, "/v1/score", {"model": "kinds", "lines": ["abca", "zyx"], "by_label": True}).json()
            assert [s["likeliest"] for s in scores["scores"]] == ["abc", "xyz"]
            loss = post(c, "/v1/eval", {"model": "kinds", "text": "abca\ncab\n", "label": "abc"}).json()["loss"]
            assert loss == pytest.approx(model.eval("abca\ncab\n", label="abc")["loss"])
            bad = post(c, "/v1/sample", {"model": "kinds", "label": "abd"})
            assert bad.status_code == 400 and "unknown label 'abd'" in bad.json()["error"]
            blended = post(c, "/v1/top", {"model": "kinds", "n": 4, "label": "abc=0.5,xyz=0.5"}).json()["samples"]
            assert [(r["text"], r["label"]) for r in blended] == [(s.text, s.label) for s in
                                                                  model.top(4, label="abc=0.5,xyz=0.5")]
            assert {r["label"] for r in blended} <= {"abc", "xyz"}  # each name's likeliest, not the blend
    finally:
        for s in served:
            s.batcher.close()
