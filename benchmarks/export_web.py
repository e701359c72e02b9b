#!/usr/bin/env python3
"""`chargen export --js/--html`: file sizes, names per second in Node and in headless Chromium
against the numpy sampler in the same run, and what quantising the weights costs in loss.

    python benchmarks/export_web.py [--n 20000] [--checkpoint names --checkpoint base]
                                    [--json bench-out/export_web.json]

Sizes: the page and the module of each checkpoint (auto encoding). The most likely names (`top`):
each of TOP_CASES searched by the module under Node against `chargen.load(...).top` in this
process, with whether they list the same names (one run each: the searches are deterministic). Speed: `--n` names at seed 1,
temperature 0.8, from the bundled names model: the numpy sampler in this process
(chargen.load().sample), the module under Node with WebAssembly SIMD and with it hidden
(--no-expose-wasm: plain JavaScript), and the exported page in Debian's chromium (its Web Worker,
timed by the page). Each timing is the best of --repeat runs. Loss: each checkpoint's line loss on
up to 2,000 of its own lines (chargen.webexport.line_loss) with its weights as stored, as int8
with a scale per row, and as float16; give the pre-quantisation bundled checkpoints (git show
6e951a3:checkpoints/names.safetensors) to see what storing them on the int8 grid cost.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cold_samples, host, print_table, write_json

NODE_BENCH = """
const m = await import(process.argv[2]);
const n = Number(process.argv[3]), repeat = Number(process.argv[4]);
let best = Infinity, names = null;
for (let r = 0; r < repeat; r++) {
  const t = performance.now();
  names = m.sample({ n, seed: 1 });
  best = Math.min(best, (performance.now() - t) / 1000);
}
process.stdout.write(JSON.stringify({ seconds: best, backend: m.backend(), text: names.join("\\n") + "\\n" }));
"""


NODE_TOP = """
const m = await import(process.argv[2]);
const t = performance.now(), records = m.top(JSON.parse(process.argv[3]));
process.stdout.write(JSON.stringify({ seconds: (performance.now() - t) / 1000, texts: records.map((r) => r.text) }));
"""

# (checkpoint, the module's options): names alone, under constraints, one label, a blend, a part, every label
TOP_CASES = [("names", {"n": 100}), ("names", {"n": 10, "regex": "[A-Z][a-z]*(el|ia)"}),
             ("base", {"n": 10, "label": "el_GR:first"}), ("base", {"n": 5, "prompt": "Ma", "label": "it=0.5,el=0.5"}),
             ("base", {"n": 5, "label": "first"}), ("base", {"n": 8})]


def node_top(module: Path, options: dict) -> dict:
    import json

    with tempfile.NamedTemporaryFile("w", suffix=".mjs", delete=False) as f:
        f.write(NODE_TOP)
    out = subprocess.run([shutil.which("node") or shutil.which("nodejs"), f.name, module.resolve().as_uri(),
                          json.dumps(options)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def python_top(spec: str, options: dict) -> tuple[float, list[str]]:
    import chargen

    o = {k: v for k, v in options.items() if k != "n"}  # (these options are named alike in both)
    model = chargen.load(spec)
    t = time.perf_counter()
    texts = [s.text for s in model.top(options["n"], **o)]
    return time.perf_counter() - t, texts


def node_rate(module: Path, n: int, repeat: int, wasm: bool) -> dict:
    node = shutil.which("node") or shutil.which("nodejs")
    with tempfile.NamedTemporaryFile("w", suffix=".mjs", delete=False) as f:
        f.write(NODE_BENCH)
    flags = [] if wasm else ["--no-expose-wasm"]
    out = subprocess.run([node, *flags, f.name, module.resolve().as_uri(), str(n), str(repeat)], capture_output=True,
                         text=True, check=True)
    import json

    return json.loads(out.stdout)


def chromium_rate(page_file: Path, n: int, repeat: int) -> float:
    from playwright.sync_api import expect, sync_playwright

    best = float("inf")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                    args=["--disable-gpu", "--disable-background-networking", "--no-first-run"])
        page = browser.new_context(offline=True).new_page()
        page.goto(page_file.as_uri())
        expect(page.locator("#status")).to_contain_text("Type a prompt")
        page.fill("#n", str(n))
        page.fill("#seed", "1")
        for _ in range(repeat):
            page.click("#go")
            expect(page.locator("#status")).to_contain_text(f"{n} samples in", timeout=300_000)
            ms = int(page.text_content("#status").split(" samples in ")[1].split(" ms")[0])
            best = min(best, ms / 1000)
            page.locator("#results tbody tr").first.wait_for()
        browser.close()
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--checkpoint", action="append", default=None, help="checkpoints to size and score")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import chargen
    from chargen.checkpoint import checkpoint_path, read_checkpoint
    from chargen.webexport import choose_encoding, line_loss, module_text, page_text

    results: dict = {"host": host(), "sizes": [], "speed": [], "loss": []}
    tmp = Path(tempfile.mkdtemp())
    for spec in args.checkpoint or ["names", "base"]:
        ckpt = read_checkpoint(checkpoint_path(spec))
        enc = choose_encoding(ckpt)
        page, module = page_text(ckpt, enc).encode(), module_text(ckpt, enc).encode()
        (tmp / f"{Path(spec).stem}.html").write_bytes(page)
        (tmp / f"{Path(spec).stem}.mjs").write_bytes(module)
        results["sizes"].append({"checkpoint": spec, "parameters": ckpt.model_config.parameters, "weights": enc.enc,
                                 "lossless": enc.lossless, "page_kb": len(page) / 1024, "module_kb": len(module) / 1024})
        base = line_loss(ckpt)
        row = {"checkpoint": spec, "stored": base}
        for kind in ("i8", "f16"):
            row[kind] = line_loss(ckpt, kind)
        results["loss"].append(row)

    model = chargen.load("names")
    cold_samples(model, 100, seed=1)  # warm
    best = float("inf")
    for _ in range(args.repeat):
        t = time.perf_counter()
        expected = [s.text for s in cold_samples(model, args.n, seed=1)]  # a fresh engine, as a command's
        best = min(best, time.perf_counter() - t)
    results["speed"].append({"where": "numpy sampler (chargen.load().sample, in-process)", "seconds": best})
    expected_text = "\n".join(expected) + "\n"
    for wasm in (True, False):
        got = node_rate(tmp / "names.mjs", args.n, args.repeat, wasm)
        results["speed"].append({"where": f"Node {subprocess.run(['node', '--version'], capture_output=True, text=True).stdout.strip()}, {got['backend']}",
                                 "seconds": got["seconds"], "same_names": got["text"] == expected_text})
    if shutil.which("chromium"):
        results["speed"].append({"where": "Chromium, the exported page's worker", "seconds":
                                 chromium_rate(tmp / "names.html", args.n, args.repeat)})
    for r in results["speed"]:
        r["names_per_s"] = args.n / r["seconds"]

    results["top"] = []
    for spec, options in TOP_CASES:
        if (tmp / f"{spec}.mjs").exists():
            js = node_top(tmp / f"{spec}.mjs", options)
            seconds, texts = python_top(spec, options)
            results["top"].append({"checkpoint": spec, "options": options, "node_s": js["seconds"], "python_s": seconds,
                                   "same_names": js["texts"] == texts})

    h = results["host"]
    print(f"{h['cpu']} ({h['cpu_flags']}), {h['cpus']} CPUs, commit {h['commit']}")
    print_table("sizes (auto encoding)", ["checkpoint", "params", "weights", "page KB", "module KB"],
                [[s["checkpoint"], f"{s['parameters']:,}", s["weights"] + (" (lossless)" if s["lossless"] else ""),
                  f"{s['page_kb']:,.0f}", f"{s['module_kb']:,.0f}"] for s in results["sizes"]])
    print_table(f"{args.n:,} names, seed 1, names model (best of {args.repeat})", ["where", "s", "names/s", "same names"],
                [[r["where"], f"{r['seconds']:.2f}", f"{r['names_per_s']:,.0f}", str(r.get("same_names", "-"))]
                 for r in results["speed"]])
    print_table("the most likely names (top): the module under Node against chargen.load().top in-process",
                ["checkpoint", "options", "Node s", "numpy s", "same names"],
                [[r["checkpoint"], str(r["options"]), f"{r['node_s']:.3f}", f"{r['python_s']:.3f}", str(r["same_names"])]
                 for r in results["top"]])
    fmt = lambda v: f"{v:.5f}" if v is not None else "n/a"  # noqa: E731
    print_table("line loss on the checkpoint's own lines (nats/char)", ["checkpoint", "stored", "int8 rows", "float16"],
                [[r["checkpoint"], fmt(r["stored"]), fmt(r["i8"]), fmt(r["f16"])] for r in results["loss"]])
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    sys.exit(main())
