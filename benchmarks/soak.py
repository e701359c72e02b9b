#!/usr/bin/env python3
"""The soak: train for a long time while a killer stops and restarts it at random moments and a
reader samples from the run directory in a loop; then resume to the end and check the history.

    python benchmarks/soak.py [--minutes 30] [--seed 0] [--json bench-out/soak.json]

- trainer: `chargen train names.txt --out RUN ...` (a 2x64 LSTM on a list of names, evaluating
  every 20 steps), then `chargen train --resume RUN` after every stop;
- killer: after a random 1-15 s, SIGKILL, SIGTERM or SIGINT (a third each); every fifth round it
  first starts a second `chargen train` into the same directory, which must be refused (exit 2);
- reader: `chargen sample -c RUN -n 5` in a loop from the moment best.safetensors exists; every
  call must succeed;
- at the end: `chargen train --resume RUN --max-steps <step + 100>` must finish, and metrics.jsonl
  must hold every evaluation step (multiples of 20) exactly once, in order: no gap, no repeat.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import DATA, print_table, write_json

EVAL_EVERY = 20
FLAGS = ["--layers", "2", "--hidden", "64", "--embed", "16", "--batch-size", "16", "--seq-len", "32",
         "--eval-every", str(EVAL_EVERY), "--sample-every", "0", "--precision", "fp32", "--quiet"]


def chargen() -> str:
    exe = Path(sys.executable).with_name("chargen")
    return str(exe) if exe.exists() else (shutil.which("chargen") or "chargen")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DATA / "names.txt")
    ap.add_argument("--json", type=Path, default=Path("bench-out/soak.json"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="chargen-soak-"))
    corpus, run = work / "names.txt", work / "run"
    shutil.copy(args.data, corpus)
    env_cache = {"CHARGEN_CACHE_DIR": str(work / "cache")}
    import os

    env = {**os.environ, **env_cache}
    counts = {"starts": 0, "SIGKILL": 0, "SIGTERM": 0, "SIGINT": 0, "ended_by_itself": 0, "second_writer_refused": 0,
              "second_writer_not_refused": 0, "bad_exit": 0, "hung": 0, "samples_ok": 0, "sample_errors": 0}
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            if not (run / "best.safetensors").exists():
                time.sleep(0.2)
                continue
            p = subprocess.run([chargen(), "sample", "-c", str(run), "-n", "5"], capture_output=True, env=env)
            if p.returncode == 0 and len(p.stdout.decode().splitlines()) == 5:
                counts["samples_ok"] += 1
            else:
                counts["sample_errors"] += 1
                errors.append(f"sample: rc {p.returncode}: {p.stderr.decode()[-300:]}")

    sampler = threading.Thread(target=reader, daemon=True)
    sampler.start()
    deadline = time.time() + args.minutes * 60
    rounds = 0
    while time.time() < deadline:
        rounds += 1
        resume = (run / "last.safetensors").exists()
        cmd = [chargen(), "train", *(["--resume", str(run)] if resume else [str(corpus), "--out", str(run), *FLAGS]),
               "--max-steps", "10000000", "--quiet"]
        # Children get the default SIGINT disposition: started in the background, this script
        # itself may ignore SIGINT, and chargen (like any program) keeps an inherited "ignore".
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        counts["starts"] += 1
        time.sleep(rng.uniform(1.0, 15.0))
        if rounds % 5 == 0 and proc.poll() is None:
            second = subprocess.run([chargen(), "train", "--resume", str(run), "--max-steps", "10000000", "--quiet"],
                                    capture_output=True, env=env)
            key = "second_writer_refused" if second.returncode == 2 and b"is in use" in second.stderr else \
                "second_writer_not_refused"
            counts[key] += 1
            if key == "second_writer_not_refused":
                errors.append(f"second writer: rc {second.returncode}: {second.stderr.decode()[-300:]}")
        sig = rng.choice([signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
        if proc.poll() is None:
            proc.send_signal(sig)
            counts[sig.name] += 1
        else:
            counts["ended_by_itself"] += 1
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:  # record where it is stuck, then end it
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            dump = subprocess.run([spy, "dump", "--native", "--pid", str(proc.pid)], capture_output=True, text=True) \
                if Path(spy).exists() else None
            errors.append(f"train did not exit within 120 s of {sig.name}: "
                          + (dump.stdout[-1500:] if dump is not None else "(py-spy not installed for a stack)"))
            proc.kill()
            rc = proc.wait()
            counts["hung"] += 1
            continue
        expected = {signal.SIGKILL: -9, signal.SIGTERM: 143, signal.SIGINT: 130}[sig]
        # 0: it ended by itself; -signal: the signal came before Python had started chargen
        if rc not in (expected, 0, -int(sig)):
            counts["bad_exit"] += 1
            errors.append(f"train after {sig.name}: rc {rc}: {proc.stderr.read().decode()[-300:]}")
    stop.set()
    sampler.join(timeout=60)

    from chargen.checkpoint import LAST, read_checkpoint

    step = read_checkpoint(run, prefer=LAST, with_resume=True).resume["step"]
    final = step + 100
    p = subprocess.run([chargen(), "train", "--resume", str(run), "--max-steps", str(final), "--quiet"],
                       capture_output=True, env=env)
    finished = p.returncode == 0
    if not finished:
        errors.append(f"final resume: rc {p.returncode}: {p.stderr.decode()[-300:]}")
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    wanted = list(range(EVAL_EVERY, final + 1, EVAL_EVERY)) + ([final] if final % EVAL_EVERY else [])
    history_ok = steps == wanted
    if not history_ok:
        missing, extra = sorted(set(wanted) - set(steps)), [s for s in steps if steps.count(s) > 1]
        errors.append(f"metrics history: missing {missing[:10]}, repeated {sorted(set(extra))[:10]}")
    result = {"minutes": args.minutes, "seed": args.seed, "rounds": rounds, **counts, "final_step": final,
              "final_resume_ok": finished, "evaluations": len(steps), "history_ok": history_ok, "errors": errors}
    print_table("soak: kills survived, samples drawn, errors", ["what", "count"],
                [[k, str(v)] for k, v in result.items() if k != "errors"] + [["errors", str(len(errors))]])
    for e in errors:
        print("ERROR", e, file=sys.stderr)
    write_json(args.json, result)
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if errors or not history_ok or not finished else 0)


if __name__ == "__main__":
    main()
