#!/usr/bin/env python3
"""Take docs/export-page.png: `chargen export names --html` opened from file:// with no network, in
Debian's chromium (the browser the tests use; needs the test extra and `apt-get install chromium`).

    python scripts/screenshot_export.py [--out docs/export-page.png] [--checkpoint names]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "export-page.png")
    ap.add_argument("--checkpoint", default="names")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=760)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        page_file = Path(tmp) / "names.html"
        chargen = Path(sys.executable).with_name("chargen")
        subprocess.run([str(chargen if chargen.exists() else "chargen"), "export", args.checkpoint, "--html",
                        str(page_file)], check=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                        args=["--disable-gpu", "--disable-background-networking", "--no-first-run"])
            context = browser.new_context(viewport={"width": args.width, "height": args.height}, offline=True)
            page = context.new_page()
            page.goto(page_file.as_uri())
            page.locator("#status").filter(has_text="Type a prompt").wait_for()
            page.fill("#prompt", "Ka")
            page.fill("#n", "12")
            page.fill("#seed", "7")
            page.click("#constraints summary")
            page.fill("#ends_with", "a")
            page.fill("#max_len", "7")
            page.press("#prompt", "Enter")
            page.locator("#results tbody tr").nth(11).wait_for()
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
