#!/usr/bin/env python3
"""`chargen serve` under load: concurrent clients on the loopback interface, against the
in-process sampler measured in the same run.

    python benchmarks/serve.py [--clients 64] [--seconds 30] [--n 10] [--window 0.002] [--fields JSON] [--json bench-out/serve.json]

First, with nothing else running, the in-process sampler's names/s with the bundled model: one
call per --n names (what a request asks for; 10 by default) and one bulk call (10,000 names: the sampler's best);
and the server's batcher with no HTTP (--clients threads asking for --n names each, 10 s), so that
HTTP's share of the latency shows.
Then `chargen serve` starts as its own process, and `--clients` connections (HTTP/1.1 keep-alive,
a minimal asyncio client so that the client costs little of the 2 cores) each POST
{"n": --n} to /v1/sample as fast as answers come, for `--seconds`. Reported: names/s through
HTTP, requests/s, latency p50/p90/p99/max, errors (non-200 or wrong answers: must be 0), the
server's peak resident memory, and its batching (network steps per second, rows per step).
Then `--sweep` runs 10 s each with fewer clients, for the latency at lighter loads; `--mixed K`
runs `--seconds` more with K of the clients sending `--fields` and the others plain requests.
`--fields` adds options to every request and in-process call (with `--mixed`: to those K clients'
only), e.g. '{"regex": "[A-Z][a-z]*(el|ia)"}' (no call gives a seed, as a server's clients mostly
do not); `--mixed-path` sends those K clients' requests to /v1/top or /v1/score instead (for
/v1/score, `--fields` is the body: '{"lines": [...]}', `--n` lines).
Targets (issue 17): at least half the in-process sampler's names/s, p99 under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from common import host, print_table, write_json

HERE = Path(__file__).resolve().parent


def in_process_rates(n: int, fields: dict, seconds: float = 5.0) -> dict[str, float]:
    import chargen

    model = chargen.load()
    model.sample(n=1000, seed=0)  # warm up

    def rate(per_call: int) -> float:
        t, made = time.perf_counter(), 0
        while time.perf_counter() - t < seconds:
            made += len(model.sample(n=per_call, **fields))
        return made / (time.perf_counter() - t)

    return {"per_request": rate(n), "bulk": rate(10_000)}


def in_process_batcher(clients: int, n: int, fields: dict, seconds: float = 10.0) -> dict[str, float]:
    """The server's batcher with no HTTP: `clients` threads each asking for n names as fast as
    answers come (what the HTTP clients do), so the cost of HTTP shows apart from the sampler's."""
    import threading

    import chargen
    from chargen.sampling.batching import Batcher

    model = chargen.load()
    batcher = Batcher(model.stepper, model.vocab)
    latencies: list[float] = []
    until = time.perf_counter() + seconds

    def caller(k: int) -> None:
        while time.perf_counter() < until:
            t = time.perf_counter()
            batcher.submit(model.drawings(n, **fields)).result()
            latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    lat = sorted(latencies)
    return {"requests_per_s": len(lat) / seconds, "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[int(0.99 * len(lat))]}


async def client(host_: str, port: int, body: bytes, n: int, until: float, latencies: list, errors: list,
                 path: str = "/v1/sample") -> None:
    reader, writer = await asyncio.open_connection(host_, port)
    answers = "scores" if path == "/v1/score" else "samples"
    request = (f"POST {path} HTTP/1.1\r\nHost: {host_}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        while time.perf_counter() < until:
            t = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            payload = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t)
            if status != 200 or len(json.loads(payload)[answers]) != n:
                errors.append(status)
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        errors.append(repr(exc))
    finally:
        writer.close()


async def load(port: int, clients: int, seconds: float, n: int, fields: Optional[dict] = None) -> tuple[list[float], list, float]:
    [(latencies, errors)], wall = await load_classes(port, [(clients, fields or {})], seconds, n)
    return latencies, errors, wall


async def load_classes(port: int, classes: list[tuple], seconds: float,
                       n: int) -> tuple[list[tuple[list[float], list]], float]:
    """(clients, fields[, path]) for each class of clients, all at once: each class's latencies and
    errors. A class on /v1/score sends `fields` as they are (its "lines": n of them)."""
    out = [([], []) for _ in classes]
    start = time.perf_counter()
    until = start + seconds

    def body(fields: dict, path: str) -> bytes:
        return json.dumps(fields if path == "/v1/score" else {"n": n, **fields}).encode()

    await asyncio.gather(*(client("127.0.0.1", port, body(c[1], path), n, until, lat, err, path)
                           for c, (lat, err) in zip(classes, out) for path in [c[2] if len(c) > 2 else "/v1/sample"]
                           for _ in range(c[0])))
    return out, time.perf_counter() - start


def latency_row(name: str, latencies: list[float], errors: list, n: int, wall: float) -> dict:
    lat = sorted(latencies) or [float("nan")]
    return {"class": name, "names_per_s": len(latencies) * n / wall, "errors": len(errors),
            "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))]}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a process has used (Linux: /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes(pid: int) -> dict[str, int]:
    """The server's process and its children: with one model, its batch's worker, then the side
    process (forked after it)."""
    children = sorted(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    names = ["batch worker", "side process"] if len(children) == 2 else [f"child {i + 1}" for i in range(len(children))]
    return {"server": pid, **dict(zip(names, children))}


def cpu_shares(pids: dict[str, int], run: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """run()'s result, and the share of a core each process (and this one, the load client) used meanwhile."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    mine = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    out = run()
    wall = time.perf_counter() - started
    now = resource.getrusage(resource.RUSAGE_SELF)
    shares = {name: (cpu_seconds(pid) - before[name]) / wall for name, pid in pids.items()}
    shares["load client"] = (now.ru_utime - mine.ru_utime + now.ru_stime - mine.ru_stime) / wall
    return out, shares


def health(port: int) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health") as r:
        return json.loads(r.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--n", type=int, default=10, help="names per request")
    ap.add_argument("--window", type=float, default=None, help="the server's batching window (default: its own)")
    ap.add_argument("--workers", type=int, default=None, help="the server's engine processes (default: its own)")
    ap.add_argument("--ahead", type=int, default=None, help="the server's samples drawn ahead per plain request "
                    "(default: its own; 0: none, each request drawn when it comes)")
    ap.add_argument("--sweep", default="8,16,32", help="fewer clients to try after the main run, 10 s each "
                                                       "(comma-separated; '' for none)")
    ap.add_argument("--fields", type=json.loads, default={}, help="JSON object: more options for every request")
    ap.add_argument("--mixed", type=int, default=0, help="then --seconds with this many of the clients sending "
                                                           "--fields and the others plain requests")
    ap.add_argument("--mixed-path", default="/v1/sample", help="where the --mixed clients send --fields: "
                                                               "/v1/sample, /v1/top or /v1/score (fields: {\"lines\": [...]})")
    ap.add_argument("--json", type=Path, default=Path("bench-out/serve.json"))
    args = ap.parse_args()

    fields = {} if args.mixed else args.fields  # (--mixed: the main run is plain)
    inproc = in_process_rates(args.n, fields)
    batcher = in_process_batcher(args.clients, args.n, fields)
    exe = Path(sys.executable).with_name("chargen")
    cmd = [str(exe), "serve", "--port", "0"] + (["--window", str(args.window)] if args.window is not None else []) \
        + (["--workers", str(args.workers)] if args.workers is not None else []) \
        + (["--ahead", str(args.ahead)] if args.ahead is not None else [])
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    try:
        line = proc.stderr.readline().decode()
        startup = time.perf_counter() - started
        port = int(line.split()[2].rstrip("/").rsplit(":", 1)[1])
        asyncio.run(load(port, 4, 1.0, args.n, fields))  # warm up
        before, ahead_before = health(port)["batching"]["names"], health(port)["ahead"]["plain"]
        (latencies, errors, wall), cpu = cpu_shares(processes(proc.pid), lambda: asyncio.run(
            load(port, args.clients, args.seconds, args.n, fields)))
        after, ahead_after = health(port)["batching"]["names"], health(port)["ahead"]["plain"]
        rss = peak_rss_mb(proc.pid)
        sweep = []
        for clients in [int(c) for c in args.sweep.split(",") if c.strip()]:
            lat_c, err_c, wall_c = asyncio.run(load(port, clients, 10.0, args.n, fields))
            sweep.append({"clients": clients, **latency_row("plain", lat_c, err_c, args.n, wall_c)})
        mixed = []
        if args.mixed:
            classes = [(args.clients - args.mixed, {}), (args.mixed, args.fields, args.mixed_path)]
            got, wall_m = asyncio.run(load_classes(port, classes, args.seconds, args.n))
            mixed = [latency_row(name, lat_m, err_m, args.n, wall_m)
                     for name, (lat_m, err_m) in zip(("plain", f"{args.mixed_path} {json.dumps(args.fields)}"), got)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    requests = len(latencies)
    names_per_s = requests * args.n / wall
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]

    steps = after["steps"] - before["steps"]
    row_steps = after["row_steps"] - before["row_steps"]
    result = {
        "clients": args.clients, "seconds": args.seconds, "n": args.n, "fields": fields, "requests": requests,
        "errors": len(errors),
        "names_per_s": names_per_s, "requests_per_s": requests / wall,
        "latency_ms": {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": 1000 * lat[-1],
                       "mean": 1000 * statistics.fmean(lat)},
        "server_peak_rss_mb": rss, "server_startup_s": startup,
        "in_process_names_per_s": inproc, "in_process_batcher": batcher, "ratio_to_in_process_bulk": names_per_s / inproc["bulk"],
        "ratio_to_in_process_per_request": names_per_s / inproc["per_request"],
        "batching": {"steps": steps, "steps_per_s": steps / wall, "mean_batch": row_steps / steps if steps else 0,
                     "batcher_thread_busy_share": (after["busy_seconds"] - before["busy_seconds"]) / wall},
        "cpu_share": cpu,
        "ahead": {k: ahead_after[k] - ahead_before[k] for k in ahead_after},  # requests answered from the stock
        "error_samples": errors[:5],
        "sweep": sweep, "mixed": mixed,
    }
    h = host()
    print_table(f"chargen serve, {args.clients} clients x {args.seconds:.0f} s, {args.n} names a request {json.dumps(fields)} "
                f"({h['cpu']}; {h['cpu_flags']})",
                ["measure", "value"],
                [[f"in-process, {args.n:,} names a call", f"{inproc['per_request']:,.0f} names/s"],
                 ["in-process, 10,000 names a call", f"{inproc['bulk']:,.0f} names/s"],
                 [f"in-process batcher, {args.clients} callers (no HTTP)",
                  f"{batcher['requests_per_s'] * args.n:,.0f} names/s, p50 / p99 {batcher['p50_ms']:.1f} / "
                  f"{batcher['p99_ms']:.1f} ms"],
                 ["through HTTP", f"{names_per_s:,.0f} names/s ({requests / wall:,.0f} requests/s)"],
                 ["  vs in-process bulk / per call", f"{result['ratio_to_in_process_bulk']:.2f}x / "
                                                     f"{result['ratio_to_in_process_per_request']:.2f}x"],
                 ["latency p50 / p90 / p99 / max", " / ".join(f"{result['latency_ms'][k]:.1f}"
                                                              for k in ("p50", "p90", "p99", "max")) + " ms"],
                 ["errors", f"{len(errors)} of {requests:,}"],
                 ["server peak RSS", f"{rss:.0f} MB"],
                 ["server start to listening", f"{startup:.2f} s"],
                 ["batching", f"{steps / wall:,.0f} network steps/s, {result['batching']['mean_batch']:.0f} rows "
                              f"a step on average, the batcher's thread busy "
                              f"{result['batching']['batcher_thread_busy_share']:.0%}"],
                 ["CPU, share of a core", ", ".join(f"{name} {share:.0%}" for name, share in cpu.items())],
                 ["drawn ahead", f"{result['ahead']['hits']:,} requests answered from the stock at once, "
                                 f"{result['ahead']['waited']:,} after waiting for it, {result['ahead']['misses']:,} "
                                 f"drawn when they came ({result['ahead']['drawn']:,} samples drawn for it)"]])
    if sweep:
        print_table("fewer clients (10 s each, same server)", ["clients", "names/s", "p50 ms", "p99 ms", "errors"],
                    [[str(s["clients"]), f"{s['names_per_s']:,.0f}", f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}",
                      str(s["errors"])] for s in sweep])
    if mixed:
        print_table(f"{args.clients - args.mixed} clients plain and {args.mixed} with {args.mixed_path} {json.dumps(args.fields)}, "
                    f"{args.seconds:.0f} s, same server", ["requests", "names/s", "p50 ms", "p99 ms", "errors"],
                    [[m["class"], f"{m['names_per_s']:,.0f}", f"{m['p50_ms']:.1f}", f"{m['p99_ms']:.1f}", str(m["errors"])]
                     for m in mixed])
    write_json(args.json, {"serve": result})


if __name__ == "__main__":
    main()
