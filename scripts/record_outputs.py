"""Record a fixed set of chargen's outputs, to show that a change of code leaves them byte-identical.

    python scripts/record_outputs.py --out before.json            # on the old code
    python scripts/record_outputs.py --out after.json --compare before.json

Everything goes through the `chargen` command (`python -m chargen`, so PYTHONPATH picks the code)
and a real `chargen serve` on a free loopback port: samples with seeds (both bundled models, a
tiny prose model trained here with a fixed seed), prompts from stdin, --unique, --novel,
--exclude, exact and guided constraints (lengths, endings, contains, regex), --top, jsonl, eval,
info --json, the errors of a few bad inputs (stderr and exit code), and the server's answers to
sample, top, eval, stream and bad requests. Each case keeps stdout, stderr and the exit code as
they are, byte for byte; only the server's clock fields (uptime) are left out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CLI_CASES: list[tuple[str, list[str], str | None]] = [
    ("names-seed", ["sample", "-n", "20", "--seed", "1"], None),
    ("names-temp-topk", ["sample", "-n", "20", "--seed", "2", "-t", "1.2", "--top-k", "5"], None),
    ("names-topp", ["sample", "-n", "20", "--seed", "3", "--top-p", "0.7"], None),
    ("names-greedy", ["sample", "-n", "3", "-t", "0", "-p", "Ma"], None),
    ("names-prompt", ["sample", "-n", "10", "--seed", "4", "-p", "Jo"], None),
    ("names-stdin", ["sample", "-n", "3", "--seed", "5", "-p", "-"], "A\nBe\nCar\n"),
    ("names-unique", ["sample", "-n", "200", "--seed", "6", "--unique"], None),
    ("names-novel", ["sample", "-n", "50", "--seed", "7", "--novel"], None),
    ("names-jsonl", ["sample", "-n", "5", "--seed", "8", "--format", "jsonl"], None),
    ("names-exact", ["sample", "-n", "20", "--seed", "9", "--max-len", "8", "--ends-with", "a"], None),
    ("names-exact-jsonl", ["sample", "-n", "5", "--seed", "9", "--min-len", "6", "--contains", "th",
                           "--format", "jsonl"], None),
    ("names-regex", ["sample", "-n", "20", "--seed", "10", "--regex", "[A-Z][a-z]*(el|ia)"], None),
    ("names-guided", ["sample", "-n", "20", "--seed", "11", "--ends-with", "ette", "--guided"], None),
    ("names-guided-jsonl", ["sample", "-n", "5", "--seed", "11", "--contains", "q", "--guided",
                            "--format", "jsonl"], None),
    ("names-top", ["sample", "--top", "15"], None),
    ("names-top-constrained", ["sample", "--top", "10", "--ends-with", "a", "--min-len", "5", "--format", "jsonl"],
     None),
    ("names-top-prompt-novel", ["sample", "--top", "10", "-p", "Ka", "--novel"], None),
    ("base-seed", ["sample", "-c", "base", "-n", "20", "--seed", "3"], None),
    ("base-top", ["sample", "-c", "base", "--top", "10", "--contains", "ll"], None),
    ("prose-seed", ["sample", "-c", "{prose}", "--seed", "1", "-l", "300"], None),
    ("prose-prompt", ["sample", "-c", "{prose}", "--seed", "2", "-p", "The ", "-l", "200", "-n", "2"], None),
    ("prose-lines", ["sample", "-c", "{prose}", "--seed", "3", "--lines", "-n", "5"], None),
    ("eval-names", ["eval", "names", "{names_txt}", "--json"], None),
    ("eval-prose", ["eval", "{prose}", "{prose_txt}"], None),
    ("info-names", ["info", "--json"], None),
    ("err-top-temp", ["sample", "--top", "5", "-t", "1"], None),
    ("err-bad-regex", ["sample", "--regex", "a(?=b)"], None),
    ("err-min-len", ["sample", "--min-len", "-1", "--seed", "1"], None),
    ("err-len-order", ["sample", "--min-len", "9", "--max-len", "3"], None),
    ("err-topp", ["sample", "--top-p", "2"], None),
    ("err-prompt", ["sample", "-p", "\u263a"], None),
    ("err-unique-count", ["sample", "-n", "5", "--unique", "--regex", "Ann?"], None),
    ("err-prose-constraint", ["sample", "-c", "{prose}", "--ends-with", "a"], None),
    ("err-format", ["sample", "--format", "xml"], None),
]

SERVER_CASES: list[tuple[str, str, dict | None]] = [
    ("health-models", "/v1/health", None),
    ("sample", "/v1/sample", {"n": 8, "seed": 1}),
    ("sample-options", "/v1/sample", {"n": 6, "seed": 2, "prompt": ["Al", "Be"], "temperature": 1.1, "top_k": 8}),
    ("sample-constrained", "/v1/sample", {"n": 6, "seed": 3, "ends_with": "a", "max_len": 7}),
    ("sample-guided", "/v1/sample", {"n": 4, "seed": 3, "regex": "[A-Z]+(el|ia)", "guided": True}),
    ("sample-contains-text", "/v1/sample", {"n": 3, "seed": 8, "contains": "an"}),
    ("sample-base", "/v1/sample", {"model": "base", "n": 5, "seed": 4, "unique": True, "novel": True}),
    ("sample-prose", "/v1/sample", {"model": "prose", "n": 1, "seed": 5, "length": 120}),
    ("top", "/v1/top", {"n": 5, "ends_with": "y"}),
    ("eval", "/v1/eval", {"text": "Anna\nBob\n"}),
    ("stream-lines", "/v1/stream", {"n": 3, "seed": 6}),
    ("stream-prose", "/v1/stream", {"model": "prose", "seed": 7, "prompt": "A", "length": 60}),
    ("err-unknown-field", "/v1/sample", {"n": 1, "bogus": 1}),
    ("err-type", "/v1/sample", {"n": "three"}),
    ("err-min-len", "/v1/sample", {"min_len": -1, "seed": 1}),
    ("err-len-order", "/v1/sample", {"min_len": 9, "max_len": 3}),
    ("err-top-p", "/v1/sample", {"top_p": 3}),
    ("err-model", "/v1/sample", {"model": "nope"}),
    ("err-top-field", "/v1/top", {"temperature": 1}),
    ("err-eval-missing", "/v1/eval", {}),
    ("err-prompt", "/v1/sample", {"prompt": "\u263a"}),
    ("err-unique", "/v1/sample", {"n": 9, "unique": True, "regex": "Ann?"}),
]

CLOCK = ("uptime_s",)


def make_prose(path: Path) -> None:
    words = "the quick brown fox jumps over a lazy dog and the cat sat on the mat while it rained".split()
    lines = []
    for i in range(600):
        line = " ".join(words[(i * 7 + k * 3) % len(words)] for k in range(6 + i % 9)).capitalize() + "."
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def run_cli(args: list[str], stdin: str | None, cwd: Path) -> dict:
    p = subprocess.run([sys.executable, "-m", "chargen", *args], cwd=cwd, input=(stdin or "").encode(),
                       capture_output=True, timeout=300)
    return {"rc": p.returncode, "stdout": p.stdout.decode("utf-8", "replace"),
            "stderr": p.stderr.decode("utf-8", "replace")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body: dict | None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    if text.startswith("event:"):  # a stream: characters that arrive together share an event, by timing
        text = _merge_text_events(text)
    if text.startswith("{"):
        obj = json.loads(text)
        for key in CLOCK:
            obj.pop(key, None)
        obj.pop("batching", None)  # counters depend on how requests happened to be batched
        text = json.dumps(obj, sort_keys=True, ensure_ascii=False)
    return {"status": status, "body": text}


def _merge_text_events(sse: str) -> str:
    events, merged = [e for e in sse.split("\n\n") if e], []
    for e in events:
        kind, _, data = e.partition("\ndata: ")
        if kind == "event: text" and merged and merged[-1][0] == "event: text":
            merged[-1][1]["text"] += json.loads(data)["text"]
        else:
            merged.append([kind, json.loads(data)])
    return "".join(f"{k}\ndata: {json.dumps(d, ensure_ascii=False)}\n\n" for k, d in merged)


def server_cases(work: Path, prose: Path) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "chargen", "serve", "-c", "names", "-c", "base",
                             "-c", f"prose={prose}", "--port", str(port)], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/v1/health", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        results = {}
        for name, path, body in SERVER_CASES:
            results[f"serve:{name}"] = request(base + path, body)
        models = json.loads(urllib.request.urlopen(base + "/v1/models").read())
        for m in models["models"]:
            m.pop("curve", None)  # the prose run's metrics hold wall-clock times
            if m["name"] == "prose":
                m.pop("saved_at", None)
        results["serve:models"] = {"body": json.dumps(models, sort_keys=True, ensure_ascii=False)}
        return results
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def record(work: Path) -> dict:
    names_txt = work / "few-names.txt"
    names_txt.write_text("Anna\nBob\nCarla\nDmitri\nEve\n")
    make_prose(work / "prose.txt")
    p = subprocess.run([sys.executable, "-m", "chargen", "train", "prose.txt", "--out", "prose", "--max-steps", "40",
                        "--layers", "2", "--hidden", "32", "--embed", "8", "--batch-size", "8", "--seq-len", "32",
                        "--eval-every", "20", "--device", "cpu", "--precision", "fp32", "--sample-every", "0", "-q"],
                       cwd=work, capture_output=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit(p.stderr.decode()[-2000:])
    prose = work / "prose"
    fill = {"{prose}": str(prose), "{names_txt}": str(names_txt), "{prose_txt}": str(work / "prose.txt")}
    results = {}
    for name, args, stdin in CLI_CASES:
        results[f"cli:{name}"] = run_cli([fill.get(a, a) for a in args], stdin, work)
    results.update(server_cases(work, prose))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="write the outputs here (JSON)")
    parser.add_argument("--compare", help="a file of recorded outputs to compare with; exit 1 on any difference")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CHARGEN_CACHE_DIR"] = str(Path(tmp) / "cache")
        os.environ.pop("CHARGEN_CHECKPOINT", None)
        results = record(Path(tmp))
    # The temporary directory's and the source tree's names appear in some outputs: fixed words.
    tree = str(Path(importlib.util.find_spec("chargen").origin).parent.parent)
    text = json.dumps(results, indent=1, sort_keys=True, ensure_ascii=False).replace(tmp, "<tmp>").replace(tree, "<tree>")
    Path(args.out).write_text(text)
    print(f"{len(results)} outputs -> {args.out}")
    if args.compare:
        old, new = json.loads(Path(args.compare).read_text()), json.loads(text)
        diffs = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        for k in diffs:
            print(f"DIFF {k}:\n  before: {json.dumps(old.get(k), ensure_ascii=False)[:600]}\n"
                  f"  after:  {json.dumps(new.get(k), ensure_ascii=False)[:600]}")
        print("identical" if not diffs else f"{len(diffs)} differences")
        sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
