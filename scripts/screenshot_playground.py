#!/usr/bin/env python3
"""Take docs/playground.png: the playground with the bundled names model, in Debian's chromium.

    python scripts/screenshot_playground.py [--out docs/playground.png] [-c MORE_MODELS ...]

Starts `chargen serve` on a free port, types a prompt and a constraint as a user would, presses
Generate, and screenshots the page with the same browser the tests use (needs the test extra
and `apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "playground.png")
    ap.add_argument("-c", "--checkpoint", action="append", default=[], help="more models to serve (NAME=PATH)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=760)
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    chargen = Path(sys.executable).with_name("chargen")
    cmd = [str(chargen if chargen.exists() else "chargen"), "serve", "--port", "0", "-c", "names"]
    for spec in args.checkpoint:
        cmd += ["-c", spec]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    try:
        line = proc.stderr.readline().decode()
        url = line.split()[2].rstrip("/")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                        args=["--disable-gpu", "--disable-background-networking", "--no-first-run"])
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(url + "/")
            page.wait_for_selector("#model option", state="attached")
            page.fill("#prompt", "Ka")
            page.fill("#n", "12")
            page.fill("#seed", "7")
            page.click("#constraints summary")
            page.fill("#ends_with", "a")
            page.fill("#max_len", "7")
            page.click("#go")
            expect(page.locator("#status")).to_contain_text("samples")
            page.hover("#results tbody tr:nth-child(2) td.sample button")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        print(f"wrote {args.out}", file=sys.stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


if __name__ == "__main__":
    main()
