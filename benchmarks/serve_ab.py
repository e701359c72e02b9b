#!/usr/bin/env python3
"""`chargen serve` from two source trees under the same load, alternated: is a server change faster?

    git worktree add /tmp/before <old commit> && cp -r checkpoints /tmp/before/
    python benchmarks/serve_ab.py --before /tmp/before [--after .] [--rounds 3] [--seconds 10] \\
        [--clients 64] [--n 10] [--json bench-out/serve_ab.json]

Each round starts `chargen serve` with the "before" tree first on PYTHONPATH, loads it with
`--clients` connections each asking for `--n` names as fast as answers come (benchmarks/serve.py's
client, in this process, which imports nothing of chargen) for `--seconds` after 2 s of warming,
stops it, then does the same with the "after" tree. Reported per tree: names/s, p50 and p99, errors,
and the CPU of the server's process and of its batch worker in µs a request (from /proc), each
round's value and their median, and the after/before ratio of the medians. Unlike
benchmarks/serve.py this measures no in-process rate: the two servers are what it compares.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import compiled, host, print_table, write_json
from serve import cpu_seconds, load, processes

ROOT = Path(__file__).resolve().parent.parent


def one_run(tree: Path, clients: int, n: int, seconds: float) -> dict:
    """Start a server from `tree`, load it, stop it: its names/s, latency and CPU a request."""
    exe = Path(sys.executable).with_name("chargen")
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    proc = subprocess.Popen([str(exe), "serve", "--port", "0"], stderr=subprocess.PIPE, env=env, cwd=tree)
    try:
        port = int(proc.stderr.readline().decode().split()[2].rstrip("/").rsplit(":", 1)[1])
        asyncio.run(load(port, clients, 2.0, n))  # warm: the prefix cache, the worker's first steps
        pids = processes(proc.pid)
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        latencies, errors, wall = asyncio.run(load(port, clients, seconds, n))
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    finally:
        proc.terminate()
        proc.wait(30)
    lat = sorted(latencies) or [float("nan")]
    requests = max(1, len(latencies))
    return {"names_per_s": len(latencies) * n / wall, "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))], "errors": len(errors),
            "server_us_per_request": 1e6 * cpu["server"] / requests,
            "worker_us_per_request": 1e6 * cpu.get("batch worker", 0.0) / requests}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="the older checkout (with its checkpoints/)")
    ap.add_argument("--after", type=Path, default=ROOT)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--n", type=int, default=10, help="names a request")
    ap.add_argument("--json", type=Path, default=Path("bench-out/serve_ab.json"))
    args = ap.parse_args()
    compiled(args.before, args.after)
    trees = {"before": args.before, "after": args.after}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, tree in trees.items():
            runs[name].append(one_run(tree, args.clients, args.n, args.seconds))
            print(f"round {r + 1} {name}: {runs[name][-1]['names_per_s']:,.0f} names/s", file=sys.stderr)
            time.sleep(1.0)
    measures = list(runs["before"][0])
    median = {name: {m: statistics.median(x[m] for x in rs) for m in measures} for name, rs in runs.items()}
    rows = [[m, " / ".join(f"{x[m]:,.1f}" for x in runs["before"]), " / ".join(f"{x[m]:,.1f}" for x in runs["after"]),
             f"{median['after'][m] / median['before'][m]:.3f}" if median["before"][m] else "-"] for m in measures]
    h = host()
    print_table(f"chargen serve, before ({args.before}) and after ({args.after}) alternated, {args.rounds} rounds, "
                f"{args.clients} clients x {args.seconds:.0f} s, {args.n} names a request ({h['cpu']}; {h['cpu_flags']})",
                ["measure", "before, each round", "after, each round", "after / before (medians)"], rows)
    write_json(args.json, {"before": str(args.before), "after": str(args.after), "rounds": args.rounds,
                           "clients": args.clients, "seconds": args.seconds, "n": args.n, "runs": runs, "median": median})


if __name__ == "__main__":
    main()
