"""`chargen serve`: a JSON API and a playground page over one or more loaded models.

    chargen serve                                  # the bundled names model, http://127.0.0.1:8000
    chargen serve -c names -c bard=checkpoints/shakespeare --port 9000

The API (all JSON; errors are `{"error": "one line"}` with a 4xx status, never a traceback):

    GET  /v1/health    liveness, the models' names and the batcher's counters (no token needed)
    GET  /v1/models    what `chargen info` shows of each model, and its validation curve
    POST /v1/sample    {"model", "n", "prompt", "temperature", "seed", ..., constraints} -> {"samples": [...]}
    POST /v1/top       the most likely samples: {"model", "n", "prompt", constraints} -> {"samples": [...]}
    POST /v1/eval      {"model", "text"} -> {"loss", "bpc", "perplexity", "chars", "skipped"}
    POST /v1/stream    one prose sample (or a line model's samples) as Server-Sent Events
    POST /v1/score     {"model", "lines": [...]} -> {"scores": [...]}, as `chargen score --format jsonl`
    GET  /v1/export    ?model=NAME&format=html|js: the model as a web page or JS module (chargen export)

Sampling requests that arrive together are drawn together as one batch (chargen.sampling.batching), by a
worker thread per model (its network steps in a worker process, `engine_processes`), so the event
loop never waits on the network; a request gets the
samples `chargen sample` prints for the same seed. A request with no seed asked again and again
is answered from samples drawn ahead for it (chargen.sampling.ahead): here for plain ones, in the
side process for those under constraints. Clients name models by name only: nothing a
client sends is ever used as a path. This module imports the ASGI stack (the `serve` extra);
nothing else in chargen does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import itertools
import signal
import json
import math
import os
import re
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

from ._version import __version__
from .api import Model, load
from .checkpoint import BUNDLED, METRICS, checkpoint_name
from .config import SampleConfig, ServeConfig, check_type, declared, is_loopback, request_fields, unknown_keys
from .errors import ChargenError, SamplingError, UsageError
from .extras import require_serve
from .sampling import parallel
from .sampling.ahead import DrawnAhead, Take
from .sampling.batching import Batcher
from .sampling.drawing import SampleStats
from .sampling.drawing import run as run_drawings
from .sampling.labels import label_facts

require_serve()

import uvicorn  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response, StreamingResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

ENV_TOKEN = "CHARGEN_SERVE_TOKEN"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CURVE_POINTS = 200  # validation points per model in /v1/models


class ApiError(Exception):
    """A request the server refuses: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# --- the models -------------------------------------------------------------------------------


@dataclass
class Served:
    """One loaded model: its name, its batcher, and the facts /v1/models reports."""

    name: str
    model: Model
    batcher: Batcher
    info: dict[str, Any] = field(default_factory=dict)


def parse_model_specs(specs: list[str]) -> list[tuple[str, str]]:
    """`-c` values -> (name, path): `name=path`, or a path named after its run directory
    (`names` stands for the bundled model)."""
    out: list[tuple[str, str]] = []
    for spec in specs or ["names"]:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            p = Path(spec)
            if spec in BUNDLED and not p.exists():
                name = spec
            elif p.is_dir():
                name = p.resolve().name
            else:
                name = checkpoint_name(p.parent.resolve() / p.name)
        if not NAME_PATTERN.fullmatch(name):
            raise UsageError(f"model name {name!r} is not a short name (letters, digits, '.', '_', '-'); "
                             f"name it: -c NAME={path}")
        if any(name == n for n, _ in out):
            raise UsageError(f"two models are named {name!r}; name them apart: -c NAME=PATH")
        out.append((name, path))
    return out


def load_models(specs: list[tuple[str, str]], config: ServeConfig, backend: str = "auto",
                device: Optional[str] = None) -> list[Served]:
    served = []
    for name, path in specs:
        model = load(path, backend=backend, device=device)
        batcher = Batcher(model.stepper, model.vocab, window=config.window, max_rows=config.max_rows,
                          max_draws=config.max_draws, workers=engine_processes(config, model.stepper),
                          name=f"chargen-batcher-{name}")
        served.append(Served(name, model, batcher, model_info(name, model)))
    return served


def engine_processes(config: ServeConfig, stepper) -> int:
    """How many worker processes advance a model's batch: --workers, by default one where they can
    run (measured on 2 cores with the load client beside it: +13% names/s and a p99 13% lower than
    in a thread of the server's process, docs/benchmarks.md); none for a model on torch (forking
    it is not safe: asking for some is an error, as `chargen sample --workers` makes it)."""
    parallel.refuse_workers(stepper, config.workers, inline=0)
    if not parallel.forkable(stepper):
        return 0
    if config.workers is not None:
        return config.workers
    return 1 if parallel.available() else 0


class SideProcess:
    """A process for the requests whose work is numpy and Python that would hold the event loop's
    GIL for milliseconds at a time: samples under constraints (the adaptive exact sampler's
    rounds), /v1/top's searches, /v1/score and /v1/eval. In the server's process they did (with 8
    of 64 clients asking for a regex, the others' p99 went from 40 ms to 425 ms; with 8 asking for
    /v1/top, from 38 to 132 ms: docs/benchmarks.md); here they hold their own, on the other core.
    Forked with the models, before any thread starts (fork copies one). A request is (kind, model
    name, arguments): "sample" (n, prompt, options) goes through a batcher of its own per model
    (the same rounds, turns and draw limit as the server's; the process keeps its warm trees
    between requests, chargen.sampling.tree.WarmTrees, draws its own seeds for unseeded ones,
    chargen.sampling.randomness.Seeds, and answers those asked again from samples drawn ahead,
    Stocks); the others are done as `side_work` does them in the
    server's process where there is no such process, at once, each in a thread of its own, as
    they were in the server's. Errors come back as the ChargenError they are. Should the process
    end (killed for memory, say), its requests in flight and every later one raise SideProcessGone,
    and the server does them in its own process from then on (`on_gone` says so once)."""

    def __init__(self, served: list[Served], max_draws: Optional[int], on_gone: Callable[[str], None] = lambda _: None,
                 ahead: int = ServeConfig.ahead):
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        # The engines' ends of their workers' pipes are forked too: the child closes them, or a
        # worker would never see the server end.
        inherited = [conn for s in served if isinstance(s.batcher.engine, parallel.ProcessEngine)
                     for conn in s.batcher.engine.workers.conns]
        models = {s.name: s.model for s in served}
        self.process = ctx.Process(target=_side_loop, args=(child, [self.conn, *inherited], models, max_draws, ahead),
                                   name="chargen-side", daemon=True)
        self.process.start()
        child.close()
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._lock = threading.Lock()  # submit runs on the event loop's thread, the reader on its own
        self._tags = itertools.count()
        self._reader = threading.Thread(target=self._read, name="chargen-side-reader", daemon=True)
        self.gone = False
        self._on_gone = on_gone
        self._closing = False  # (then the process's end is no news)

    def submit(self, kind: str, name: str, args: dict[str, Any]) -> concurrent.futures.Future:
        """The request's answer (see the class), or its error."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self.gone:
                raise SideProcessGone()
            tag = next(self._tags)
            self._pending[tag] = future
            if self._reader.ident is None:
                self._reader.start()
            try:
                self.conn.send((tag, kind, name, args))
            except OSError:  # the process has ended; the reader is told so too
                del self._pending[tag]
                raise SideProcessGone() from None
        return future

    def _read(self) -> None:
        while True:
            try:
                tag, outcome = self.conn.recv()
            except (EOFError, OSError):  # the process ended: nothing more will come
                with self._lock:
                    pending, self._pending, self.gone = self._pending, {}, True
                for future in pending.values():
                    future.set_exception(SideProcessGone())
                if not self._closing:
                    self.process.join(timeout=5)
                    self._on_gone(f"chargen serve: the side process ended (exit code {self.process.exitcode}); "
                                  f"the requests it ran are done in the server's process from now on")
                return
            with self._lock:
                future = self._pending.pop(tag)
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def close(self) -> None:
        self._closing = True
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.terminate()
        self.conn.close()


class SideProcessGone(RuntimeError):
    """The side process has ended: do the request here."""


def side_work(model: Model, kind: str, args: dict[str, Any]) -> Any:
    """One request's work besides sampling, in the side process or (where there is none) a thread
    of the server's: "top" and "score": records; "eval": eval's dict."""
    if kind == "top":
        return [s.record() for s in model.top(args["n"], args["prompt"], **args["options"])]
    if kind == "score":
        return [s.record() for s in model.score(args["lines"], **args["options"])]
    if kind == "eval":
        return model.eval(args["text"], **args["options"])
    raise ValueError(f"no such work: {kind!r}")


class Stocks:
    """Samples drawn ahead (chargen.sampling.ahead) for requests asked again and again with no seed,
    and the drawings that fill them: the server's for plain requests (its event loop calls it), the
    side process's for those under constraints (its threads call it: hence the lock). The adaptive
    exact sampler's samples are independent draws of the conditioned distribution whatever its
    tree's bounds, so a stock of them answers such a request as well as drawing them then. Each
    sample is kept as its record with its share of the draws that found it: a request's `draws`
    counts what its samples cost."""

    def __init__(self, capacity: int, constrained: bool):
        self.ahead, self.constrained = DrawnAhead(capacity), constrained
        self.lock = threading.Lock()

    def take(self, key: tuple[str, str], n: int, waiter: Any, model: Model, batcher: Batcher, prompt: str,
             options: dict[str, Any], loop: Optional[asyncio.AbstractEventLoop] = None) -> Take:
        """DrawnAhead.take, and the drawings it makes due, started in the batcher (its futures the
        loop's, where given; their waiters settled with (record, draws) pairs)."""
        with self.lock:
            take = self.ahead.take(key, n, waiter)
        for due in take.due:
            self._draw(key, due, model, batcher, prompt, options, loop)
        return take

    def _draw(self, key: tuple[str, str], due: int, model: Model, batcher: Batcher, prompt: str,
              options: dict[str, Any], loop: Optional[asyncio.AbstractEventLoop]) -> None:
        stats = SampleStats()

        def settle(samples: list[tuple[dict[str, Any], float]]) -> None:
            with self.lock:
                settled = self.ahead.add(key, samples, due)
            for waiter, got in settled:
                waiter.set_result(got)

        def drawn(done) -> None:  # (an asyncio or a concurrent future)
            samples = done.result() if not done.cancelled() and done.exception() is None else []
            settle([(s.record(self.constrained), stats.draws / len(samples)) for s in samples])

        try:
            batcher.submit(model.drawings(due, prompt, stats=stats, **options), loop).add_done_callback(drawn)
        except (ChargenError, RuntimeError):  # bad settings (the request's own drawing says why); a closed batcher
            settle([])


def _side_answer(stocks: Stocks, model: Model, batcher: Batcher, name: str, args: dict[str, Any],
                 reply: Callable[[Any], None], own: Callable[[], Any]) -> None:
    """A constrained request in the side process: reply((records, draws, accepted)) from its stock,
    now or when what it waits for is drawn; or own(): it draws its own samples."""
    key = ahead_key(name, {**args["options"], "prompt": args["prompt"]}, model.line_oriented)
    if key is None:
        own()
        return
    waiter: concurrent.futures.Future = concurrent.futures.Future()
    take = stocks.take(key, args["n"], waiter, model, batcher, args["prompt"], args["options"])
    if take.samples is not None:
        reply(_from_stock(take.samples))
    elif take.waits:
        waiter.add_done_callback(lambda f: reply(_from_stock(f.result())) if f.result() is not None else own())
    else:
        own()


def _from_stock(samples: list[tuple[dict[str, Any], float]]) -> tuple[list[dict[str, Any]], int, int]:
    """A request's answer from stocked samples: their records, the draws they cost, and how many."""
    return [r for r, _ in samples], max(len(samples), round(sum(c for _, c in samples))), len(samples)


def _side_loop(conn, inherited: list, models: dict[str, Model], max_draws: Optional[int], ahead: int) -> None:
    """SideProcess's loop: samples under constraints go to the model's batcher here (they take
    turns there, each holding nothing while it waits), the other requests each to a thread of
    their own; answers go back as they are done."""
    for other in inherited:
        other.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which then stops this
    parallel.one_blas_thread()
    batchers = {name: Batcher(model.stepper, model.vocab, window=0, max_draws=max_draws,
                              name=f"chargen-side-{name}") for name, model in models.items()}
    sending = threading.Lock()

    def outcome(kind: str, work: Callable[[], Any]) -> Any:
        """What work() returns, or the error to send back."""
        try:
            return work()
        except ChargenError as exc:
            return exc
        except Exception:  # noqa: BLE001 - logged here; the request gets a 500
            traceback.print_exc()
            return RuntimeError(f"{kind} failed (see the server's log)")

    def send(tag: int, answer: Any) -> None:
        with sending, contextlib.suppress(BrokenPipeError, OSError):  # (the server has gone: nothing to tell)
            conn.send((tag, answer))

    def other(tag: int, kind: str, name: str, args: dict[str, Any]) -> None:
        send(tag, outcome(kind, lambda: side_work(models[name], kind, args)))

    def own(tag: int, name: str, args: dict[str, Any]) -> None:
        stats = SampleStats()
        # (checking the options compiles the constraints: in a thread, not the loop that reads requests)
        drawings = outcome("sample", lambda: models[name].drawings(args["n"], args["prompt"], stats=stats,
                                                                   **args["options"]))
        if isinstance(drawings, BaseException):
            send(tag, drawings)
            return
        batchers[name].submit(drawings).add_done_callback(lambda done: send(tag, outcome("sample", lambda: (
            [s.record(True) for s in done.result()], stats.draws, stats.accepted))))

    def sample(tag: int, kind: str, name: str, args: dict[str, Any]) -> None:
        _side_answer(stocks, models[name], batchers[name], name, args, lambda answer: send(tag, answer),
                     lambda: pool.submit(own, tag, name, args))

    stocks = Stocks(ahead, constrained=True)
    with concurrent.futures.ThreadPoolExecutor(thread_name_prefix="chargen-side") as pool:
        while True:
            try:
                message = conn.recv()
            except (EOFError, KeyboardInterrupt):
                return
            if message is None:
                return
            if message[1] == "ahead":  # /v1/health's counters: at once, whatever the threads are doing
                send(message[0], stocks.ahead.stats.to_dict())
                continue
            pool.submit(sample if message[1] == "sample" else other, *message)


def model_info(name: str, model: Model) -> dict[str, Any]:
    """What `chargen info --json` says, without file paths (the base model by its file name),
    and the validation curve of its run directory if it has one."""
    facts = model.checkpoint.public_facts()
    facts["name"] = name
    if facts.get("labels"):  # what its labels can be asked by (the playground suggests them)
        facts["labels"] = {**facts["labels"], **label_facts(facts["labels"]["names"], facts["labels"].get("own"))}
    facts["curve"] = _curve(model.checkpoint.path.parent / METRICS)
    return facts


def _curve(path: Path) -> list[list[float]]:
    """[[chars_seen, val_loss], ...] from a run's metrics.jsonl, thinned to CURVE_POINTS."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    points = []
    for line in lines:
        try:
            r = json.loads(line)
            x, y = float(r["chars_seen"]), float(r["val_loss"])
        except (ValueError, KeyError, TypeError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            points.append([x, round(y, 4)])
    stride = max(1, math.ceil(len(points) / CURVE_POINTS))
    return points[::stride] + ([points[-1]] if points and (len(points) - 1) % stride else [])


# --- requests ---------------------------------------------------------------------------------

# The fields each endpoint takes besides "model": the Python API's keywords, declared once in
# chargen.config (SampleConfig); eval's are its own.
SAMPLE_FIELDS = {name: d.accepts for name, d in request_fields("sample").items()}
TOP_FIELDS = {name: d.accepts for name, d in request_fields("top").items()}
STREAM_FIELDS = {name: d.accepts for name, d in request_fields("stream").items()}
LABEL_FIELD = declared(SampleConfig)["label"].accepts  # (eval and score take a label as sampling does)
EVAL_FIELDS = {"text": "str", "skip_unknown": "bool", "lines": "Optional[bool]", "label": LABEL_FIELD}
SCORE_FIELDS = {"lines": "list[str]", "skip_unknown": "bool", "label": LABEL_FIELD, "by_label": "bool"}
CONSTRAINT_FIELDS = tuple(d.field for d in declared(SampleConfig).values() if d.opt.role == "constraint")


def spelling(name: str) -> str:
    """How the API spells an option named in a message: its JSON field, quoted ('n' for num)."""
    if name == "top":
        return "/v1/top with 'n'"
    if name == "no_lines":
        return "'lines': false"
    d = declared(SampleConfig).get(name)
    return f"'{d.field if d is not None else name}'"


async def read_json(scope: dict, receive: Callable, limit: int) -> dict[str, Any]:
    """The request's JSON object, read from the ASGI `receive`: refused past `limit` bytes (chunked
    bodies too) or if malformed."""
    headers = dict(scope["headers"])
    ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "send a JSON body with Content-Type: application/json "
                            "(curl: -H 'Content-Type: application/json')")
    declared = headers.get(b"content-length", b"").decode("latin-1")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is {int(declared):,} bytes, above this server's limit of {limit:,}")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        body += message.get("body", b"")
        if len(body) > limit:
            raise ApiError(413, f"the body is above this server's limit of {limit:,} bytes")
        if not message.get("more_body", False):
            break
    try:
        data = json.loads(bytes(body).decode("utf-8")) if body else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(data).__name__}")
    return data


def check_fields(data: dict[str, Any], allowed: dict[str, str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """`data` without "model", its fields known and of their declared types; None means "not given"."""
    unknown = sorted(k for k in data if k != "model" and k not in allowed)
    if unknown:
        raise ApiError(400, f"unknown field(s) {unknown_keys(unknown, ['model', *allowed])}")
    out = {}
    for key, annotation in allowed.items():
        value = data.get(key)
        if value is None:
            if key in required:
                raise ApiError(400, f"the field {key!r} is required")
            continue
        check_type(key, value, annotation)
        out[key] = value
    return out


def ahead_key(name: str, fields: dict[str, Any], line_oriented: bool) -> Optional[tuple[str, str]]:
    """What a request's samples drawn ahead are kept by (chargen.sampling.ahead): the model and its
    settings but n. None for a request whose samples are not independent draws that any time
    gives alike: a seed (its own samples), `unique` (the samples of one request apart), `novel` or
    `exclude` (their redraws), several prompts; or prose. (Constraints qualify: exact samples are
    independent draws of the conditioned distribution, and so are --guided's and --rejection's.)"""
    if "seed" in fields or any(fields.get(k) for k in ("unique", "novel", "exclude")):
        return None
    if not isinstance(fields.get("prompt", ""), str) or not fields.get("lines", line_oriented):
        return None
    return name, json.dumps({k: v for k, v in fields.items() if k != "n"}, sort_keys=True)


class Server:
    """The ASGI app's state and handlers: the models, the limits, the streams open."""

    def __init__(self, served: list[Served], config: ServeConfig, side: Optional[SideProcess] = None):
        self.models = {s.name: s for s in served}
        self.config = config
        self.side = side  # where the slow requests run (None: threads of this process, and the batchers)
        self.streams = 0
        self.stocks = Stocks(config.ahead, constrained=False)  # plain requests asked again and again, answered at once
        self.exports: dict[tuple[str, str], bytes] = {}  # (model, format) -> the file, built on first ask
        self.started = time.time()
        self.page = playground_page()
        self.assets = {"/playground.js": (_asset("playground.js"), "text/javascript; charset=utf-8"),
                       "/ui.js": (_asset("ui.js"), "text/javascript; charset=utf-8"),
                       "/playground.css": (_asset("playground.css"), "text/css; charset=utf-8"),
                       "/favicon.svg": (_asset("favicon.svg"), "image/svg+xml")}

    def model(self, data: dict[str, Any]) -> Served:
        name = data.get("model")
        if name is None:
            return next(iter(self.models.values()))
        if not isinstance(name, str) or name not in self.models:
            shown = json.dumps(name)[:40]
            raise ApiError(404, f"no model named {shown} here (models: {', '.join(self.models)})")
        return self.models[name]

    def parse(self, data: dict[str, Any], allowed: dict[str, Any],
              required: tuple[str, ...] = ()) -> tuple[Served, dict[str, Any]]:
        """A request's model and its checked fields (each endpoint names the fields it takes)."""
        return self.model(data), check_fields(data, allowed, required)

    def limit_sample(self, fields: dict[str, Any], n_default: int = 1) -> int:
        c = self.config
        prompts = fields.get("prompt", "")
        count = 1 if isinstance(prompts, str) else len(prompts)
        if count > c.max_prompts:
            raise ApiError(400, f"{count} prompts is above this server's limit of {c.max_prompts}")
        n = fields.get("n", n_default)
        if n * count > c.max_n:
            raise ApiError(400, f"n {n} x {count} prompt(s) is above this server's limit of {c.max_n} samples a request")
        if fields.get("length", 0) > c.max_length:
            raise ApiError(400, f"length {fields['length']} is above this server's limit of {c.max_length}")
        return n

    # --- handlers ---

    async def index(self, request: Request) -> Response:
        return Response(self.page, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self'",
                                 "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    async def asset(self, request: Request) -> Response:
        body, media = self.assets[request.url.path]
        return Response(body, media_type=media, headers={"X-Content-Type-Options": "nosniff",
                                                         "Cache-Control": "no-cache"})

    async def health(self, request: Request) -> Response:
        ahead = {"plain": self.stocks.ahead.stats.to_dict()}
        if self.side is not None:  # the side process's stocks, for the requests under constraints
            with contextlib.suppress(SideProcessGone):
                ahead["constrained"] = await self._in_side("ahead", next(iter(self.models.values())), {})
        return JSONResponse({"status": "ok", "version": __version__, "uptime_s": round(time.time() - self.started, 1),
                             "models": list(self.models), "streams": self.streams,
                             "batching": {name: s.batcher.stats.to_dict() for name, s in self.models.items()},
                             "ahead": ahead})

    async def export(self, request: Request) -> Response:
        """This model as one web page or one JS module (chargen export --html / --js): a download.
        The model is named from this server's list; the export is built once, off the event loop."""
        kind = request.query_params.get("format", "html")
        if kind not in EXPORT_FORMATS:
            raise ApiError(400, f"format must be one of {', '.join(EXPORT_FORMATS)} (got {json.dumps(kind)[:40]})")
        served = self.model({"model": request.query_params.get("model")})
        key = (served.name, kind)
        if key not in self.exports:
            self.exports[key] = await asyncio.to_thread(_export, served.model.checkpoint, kind)
        suffix, media = EXPORT_FORMATS[kind]
        return Response(self.exports[key], media_type=media,
                        headers={"Content-Disposition": f'attachment; filename="{served.name}{suffix}"',
                                 "X-Content-Type-Options": "nosniff"})

    async def list_models(self, request: Request) -> Response:
        return JSONResponse({"models": [s.info for s in self.models.values()]})

    async def sample(self, data: dict[str, Any]) -> dict[str, Any]:
        served, fields = self.parse(data, SAMPLE_FIELDS)
        n = self.limit_sample(fields)
        options = {k: v for k, v in fields.items() if k not in ("n", "prompt")}
        prompt = fields.get("prompt", "")
        constrained = any(k in fields for k in CONSTRAINT_FIELDS)
        key = None if constrained else ahead_key(served.name, fields, served.model.line_oriented)
        if key is not None:  # a plain request: from the samples drawn ahead for it, if it has some
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            take = self.stocks.take(key, n, waiter, served.model, served.batcher, prompt, options, loop)
            ready = take.samples if not take.waits else await waiter  # (None: the drawing failed)
            if ready is not None:
                records, draws, accepted = _from_stock(ready)
                return {"model": served.name, "samples": records, "draws": draws, "accepted": accepted}
        stats = SampleStats()
        if constrained and self.side is not None:  # drawn in the side process, which checks them
            with contextlib.suppress(SideProcessGone):  # (else drawn here, below)
                records, draws, accepted = await self._in_side("sample", served,
                                                               {"n": n, "prompt": prompt, "options": options})
                return {"model": served.name, "samples": records, "draws": draws, "accepted": accepted}
        if constrained:  # checking them compiles an automaton: off the event loop, like drawing
            drawings = await asyncio.to_thread(served.model.drawings, n, prompt, stats=stats, **options)
        else:
            drawings = served.model.drawings(n, prompt, stats=stats, **options)
        samples = await served.batcher.submit(drawings, asyncio.get_running_loop())
        return {"model": served.name, "samples": [s.record(constrained) for s in samples],
                "draws": stats.draws, "accepted": stats.accepted}

    async def top(self, data: dict[str, Any]) -> dict[str, Any]:
        served, fields = self.parse(data, TOP_FIELDS)
        n = self.limit_sample(fields, n_default=10)
        options = {k: v for k, v in fields.items() if k not in ("n", "prompt")}
        records = await self.aside("top", served, {"n": n, "prompt": fields.get("prompt", ""), "options": options})
        return {"model": served.name, "samples": records}

    async def eval(self, data: dict[str, Any]) -> dict[str, Any]:
        served, fields = self.parse(data, EVAL_FIELDS, required=("text",))
        text = fields.pop("text")
        return {"model": served.name, **await self.aside("eval", served, {"text": text, "options": fields})}

    async def score(self, data: dict[str, Any]) -> dict[str, Any]:
        served, fields = self.parse(data, SCORE_FIELDS, required=("lines",))
        lines = fields.pop("lines")
        if len(lines) > self.config.max_n:
            raise ApiError(400, f"{len(lines)} lines is above this server's limit of {self.config.max_n} a request")
        if any(len(line) > self.config.max_length for line in lines):
            raise ApiError(400, f"a line is longer than this server's limit of {self.config.max_length} characters")
        return {"model": served.name, "scores": await self.aside("score", served, {"lines": lines, "options": fields})}

    async def aside(self, kind: str, served: Served, args: dict[str, Any]) -> Any:
        """side_work off the event loop's GIL: in the side process where there is one (and it has
        not ended), else in a thread of this process."""
        if self.side is not None:
            with contextlib.suppress(SideProcessGone):
                return await self._in_side(kind, served, args)
        return await asyncio.to_thread(side_work, served.model, kind, args)

    async def _in_side(self, kind: str, served: Served, args: dict[str, Any]) -> Any:
        sent = await asyncio.to_thread(self.side.submit, kind, served.name, args)  # (a full pipe blocks)
        return await asyncio.wrap_future(sent)

    async def stream(self, request: Request) -> Response:
        served, fields = self.parse(await read_json(request.scope, request.receive, self.config.max_body), STREAM_FIELDS)
        if not isinstance(fields.get("prompt", ""), str):
            raise ApiError(400, "'prompt' must be text: a stream draws from one prompt")
        n = self.limit_sample(fields)
        line_mode = served.model.line_oriented if fields.get("lines") is None else fields["lines"]
        if n > 1 and not line_mode:
            raise ApiError(400, "a prose stream draws one sample: drop 'n'")
        if self.streams >= self.config.max_streams:
            raise ApiError(429, f"{self.streams} streams are open, this server's limit; try again shortly")
        relay = _Relay(asyncio.get_running_loop())
        options = {k: v for k, v in fields.items() if k not in ("n", "prompt")}
        # Checked now, so that a bad option is a 400 rather than an error event.
        drawings = served.model.drawings(n, fields.get("prompt", ""), on_char=None if line_mode else relay.on_char,
                                         **options)
        return StreamingResponse(self._events(served, fields.get("prompt", ""), drawings, relay, line_mode), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _events(self, served: Served, prompt: str, drawings, relay: "_Relay",
                      line_mode: bool) -> AsyncIterator[str]:
        """SSE: `text` events with what was drawn since the last one (prose: characters, the
        prompt first; a line model: one line each), `sample` with each sample's record, then
        `done`; or `error` with a one-line message."""
        def run() -> None:
            try:
                for s in run_drawings(served.model.stepper, served.model.vocab, drawings):
                    if line_mode:
                        relay.put("text", {"text": s.text})
                    relay.put("sample", s.record())
            except _ClientGone:
                pass
            except ChargenError as exc:
                relay.put("error", {"error": exc.render(spelling)})
            except Exception:  # logged here, never sent
                traceback.print_exc()
                relay.put("error", {"error": "internal error (see the server's log)"})
            finally:
                relay.put("end", None)

        self.streams += 1
        worker = asyncio.get_running_loop().run_in_executor(None, run)
        try:
            if prompt and not line_mode:
                yield _event("text", {"text": prompt})
            while True:
                kind, value = await relay.queue.get()
                if kind == "char":  # coalesce the characters that arrived meanwhile
                    chars, kind = [value], None
                    while not relay.queue.empty():
                        kind, value = relay.queue.get_nowait()
                        if kind != "char":
                            break
                        chars.append(value)
                        kind = None
                    yield _event("text", {"text": "".join(chars)})
                    if kind is None:
                        continue
                if kind == "end":
                    yield _event("done", {})
                    break
                yield _event(kind, value)
        finally:
            relay.gone = True
            self.streams -= 1
            await asyncio.shield(worker)


class _Relay:
    """Hands what a drawing thread produces to the event loop's queue, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.gone = False

    def put(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def on_char(self, ch: str) -> None:
        if self.gone:
            raise _ClientGone()  # stops the drawing: nobody is reading
        self.put("char", ch)


class _ClientGone(Exception):
    """The client has disconnected: raised while its request's body is read, or inside a stream's
    drawing thread."""


def _json_headers() -> dict[str, str]:
    return {"Cache-Control": "no-store"}


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def playground_page() -> bytes:
    """The playground, its controls starting at the sampling options' declared defaults."""
    from .webexport import control_defaults, filled

    return filled(_asset("playground.html").decode("utf-8"), control_defaults()).encode("utf-8")


EXPORT_FORMATS = {"html": (".html", "text/html; charset=utf-8"), "js": (".mjs", "text/javascript; charset=utf-8")}


def _export(checkpoint, kind: str) -> bytes:
    from . import webexport

    encoding = webexport.choose_encoding(checkpoint)
    text = webexport.page_text(checkpoint, encoding) if kind == "html" else webexport.module_text(checkpoint, encoding)
    return text.encode("utf-8")


def _asset(name: str) -> bytes:
    return resources.files("chargen").joinpath("static", name).read_bytes()


# --- the app ----------------------------------------------------------------------------------

CRASHED = "internal error (see the server's log)"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": _one_line(message)}, status_code=status, headers=_json_headers())


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _refused(exc: Exception) -> Optional[tuple[int, str]]:
    """The status and message for an error the request caused; None for any other (a crash)."""
    if isinstance(exc, ApiError):
        return exc.status, str(exc)
    if isinstance(exc, SamplingError):  # the model cannot produce what was asked
        return 422, exc.render(spelling)
    if isinstance(exc, ChargenError):  # a bad option: what `chargen sample` would print as Error:
        return 400, exc.render(spelling)
    return None


class JsonEndpoint:
    """A POST endpoint that takes a JSON object and answers one, `handler(data) -> dict`, as a bare
    ASGI app: no Request or Response objects and, for a POST, none of Starlette's layers (the
    front calls it directly: with them, a /v1/sample request took a fifth more of the server's
    process, docs/benchmarks.md). Errors the request caused are 4xx JSON, anything else is logged and
    answered 500, as Starlette's handlers answer the other endpoints; the body is Starlette's
    JSONResponse's, byte for byte."""

    def __init__(self, handler: Callable[[dict[str, Any]], Any], limit: int):
        self.handler, self.limit = handler, limit

    async def __call__(self, scope, receive, send) -> None:
        try:
            status, payload = 200, await self.handler(await read_json(scope, receive, self.limit))
            body = _json_body(payload)
        except _ClientGone:  # nobody to answer
            return
        except Exception as exc:  # noqa: BLE001 - every error is an answer; a crash's goes to the log only
            refused = _refused(exc)
            if refused is None:
                traceback.print_exception(exc, file=sys.stderr)
                refused = 500, CRASHED
            status, body = refused[0], _json_body({"error": _one_line(refused[1])})
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json"),
                                *((k.lower().encode(), v.encode()) for k, v in _json_headers().items())]})
        await send({"type": "http.response.body", "body": body})


def _json_body(payload: dict[str, Any]) -> bytes:
    """What Starlette's JSONResponse renders."""
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


def build_app(served: list[Served], config: ServeConfig, side: Optional[SideProcess] = None) -> "_Front":
    """The ASGI app: routes, the token and host checks, JSON errors for everything."""
    server = Server(served, config, side)

    def wrap(handler: Callable) -> Callable:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except _ClientGone:
                return Response(status_code=204)  # (nobody reads it)
            except (ApiError, ChargenError) as exc:
                return _error(*_refused(exc))
        return endpoint

    posts = {path: JsonEndpoint(handler, config.max_body) for path, handler in (
        ("/v1/sample", server.sample), ("/v1/top", server.top), ("/v1/eval", server.eval), ("/v1/score", server.score))}
    routes = [
        Route("/", server.index, methods=["GET"]),
        Route("/playground.js", server.asset, methods=["GET"]),
        Route("/ui.js", server.asset, methods=["GET"]),
        Route("/playground.css", server.asset, methods=["GET"]),
        Route("/favicon.svg", server.asset, methods=["GET"]),
        Route("/v1/health", server.health, methods=["GET"]),
        Route("/v1/models", server.list_models, methods=["GET"]),
        *(Route(path, endpoint, methods=["POST"]) for path, endpoint in posts.items()),  # (their 405s)
        Route("/v1/stream", wrap(server.stream), methods=["POST"]),
        Route("/v1/export", wrap(server.export), methods=["GET"]),
    ]

    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = {404: f"no such endpoint: {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
        response = _error(exc.status_code, message)
        response.headers.update(exc.headers or {})  # a 405's Allow
        return response

    async def crash(request: Request, exc: Exception) -> Response:
        traceback.print_exception(exc, file=sys.stderr)  # the log has it; the client never does
        return _error(500, CRASHED)

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: crash})
    app.state.server = server
    return _Front(app, config, posts)


class _Front:
    """The outermost ASGI app: the Host check (a server on localhost answers only to local names,
    against DNS rebinding) and the bearer token on /v1/ (but /v1/health); then a POST to a JSON
    endpoint goes straight to it, anything else through Starlette."""

    HOSTS_KEPT = 64  # Host headers whose check is remembered (a client's is the same each time)

    def __init__(self, app, config: ServeConfig, posts: dict[str, JsonEndpoint]):
        self.app, self.config, self.posts = app, config, posts
        self.state = app.state
        self.token = config.token.encode() if config.token else None
        self.loopback = config.loopback
        self._local: dict[bytes, bool] = {}  # Host header -> a local name

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            refusal = self._refusal(scope["path"], headers)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
            endpoint = self.posts.get(scope["path"])
            if endpoint is not None and scope["method"] == "POST":
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _local_name(self, host: bytes) -> bool:
        if host not in self._local:
            if len(self._local) >= self.HOSTS_KEPT:
                self._local.clear()
            text = host.decode("latin-1")
            self._local[host] = is_loopback(text.rsplit(":", 1)[0] if not text.endswith("]") else text)
        return self._local[host]

    def _refusal(self, path: str, headers: dict[bytes, bytes]) -> Optional[Response]:
        if self.loopback:
            host = headers.get(b"host", b"")
            if not self._local_name(host):
                return _error(421, f"this server answers to localhost only, not {host.decode('latin-1')[:60]!r} "
                                   f"(serve with --host to be reached by other names)")
        if self.token is not None and path.startswith("/v1/") and path != "/v1/health":
            auth = headers.get(b"authorization", b"")
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                response = _error(401, "this server needs a token: send Authorization: Bearer TOKEN")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return None


# --- running it -------------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a taken port is one clear error (port 0: any free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"`host` {host}: cannot resolve it ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def uvicorn_server(app, **options):
    """uvicorn's Server, stopping on SIGINT and SIGTERM as uvicorn does (no new connections, the
    requests in flight answered) but then returning where uvicorn would raise the signal again:
    a stop that was asked for is a clean exit, code 0."""
    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server(uvicorn.Config(app, **options))


def serve(specs: list[str], config: ServeConfig, *, backend: str = "auto", device: Optional[str] = None,
          notice: Callable[[str], None] = lambda _: None, access_log: bool = False) -> None:
    """Load the models, listen, and serve until SIGINT or SIGTERM; requests in flight finish."""
    config.validate()
    named = parse_model_specs(specs)
    sock = listen(config.host, config.port)
    served = load_models(named, config, backend=backend, device=device)
    # The slow requests in a process of their own where the batches have worker processes
    # (started now, before any thread: fork copies one).
    side = SideProcess(served, config.max_draws, on_gone=notice, ahead=config.ahead) \
        if all(isinstance(s.batcher.engine, parallel.ProcessEngine) for s in served) else None
    app = build_app(served, config, side)
    # X-Forwarded-For from a proxy on this machine names the client in the access log, its only
    # reader: parsed only when there is one (it is 4% of a request's time in the server's process).
    server = uvicorn_server(app, log_level="warning", access_log=access_log, lifespan="off", proxy_headers=access_log,
                            timeout_graceful_shutdown=10, server_header=False)
    url = url_of(sock, config.host)
    if not config.loopback and config.token is None:
        notice(f"warning: serving on {config.host} without --token: anyone who can reach this port can use the API")
    models = ", ".join(f"{s.name} ({s.model.checkpoint.model_config.layers}x{s.model.checkpoint.model_config.hidden}"
                       f" {s.model.checkpoint.model_config.cell}{', lines' if s.model.line_oriented else ', prose'})"
                       for s in served)
    notice(f"chargen serve: {url}/ (playground) and {url}/v1/ (API); models: {models}; Ctrl-C stops")
    try:
        server.run(sockets=[sock])  # returns once a signal has stopped it and requests in flight are answered
    finally:
        for s in served:
            s.batcher.close(10.0)
        if side is not None:
            side.close()
    notice("chargen serve: stopped")


def token_from_env(token: Optional[str]) -> Optional[str]:
    return token if token is not None else (os.environ.get(ENV_TOKEN) or None)
