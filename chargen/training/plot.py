"""Loss curves: a chart for the terminal and an SVG file, from metrics.jsonl records.

No plotting library: the SVG is a few lines of markup and the terminal chart a grid of
characters, so a run directory's curve can be drawn anywhere chargen runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from ..errors import UsageError
from ..files import atomic_write

LOSS_SVG = "loss.svg"

Series = dict[str, list[tuple[float, float]]]  # name -> [(characters seen, loss)]


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.exists():
        raise UsageError(f"{path} does not exist; `plot` needs a run directory with metrics.jsonl")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UsageError(f"{path}, line {n}, is not JSON") from None
    if not records:
        raise UsageError(f"{path} holds no evaluations yet")
    return records


def loss_series(records: Sequence[dict[str, Any]]) -> Series:
    def pick(key: str) -> list[tuple[float, float]]:
        return [(float(r["chars_seen"]), float(r[key])) for r in records
                if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]

    return {"train": pick("train_loss"), "val": pick("val_loss")}


def _bounds(series: Series) -> tuple[float, float, float, float]:
    points = [p for pts in series.values() for p in pts]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    pad = (y1 - y0) * 0.05 or 0.1
    return x0, x1, y0 - pad, y1 + pad


def _human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def terminal_chart(series: Series, width: int = 64, height: int = 14) -> str:
    """A plain-text chart of loss against characters seen: 't' train, 'v' val, '*' both."""
    if not any(series.values()):
        return "(no points to plot)"
    x0, x1, y0, y1 = _bounds(series)
    grid = [[" "] * width for _ in range(height)]
    marks = {"train": "t", "val": "v"}
    for name, pts in series.items():
        for x, y in pts:
            col = min(width - 1, int((x - x0) / (x1 - x0) * (width - 1) + 0.5))
            row = min(height - 1, int((y1 - y) / (y1 - y0) * (height - 1) + 0.5))
            cell = grid[row][col]
            grid[row][col] = marks[name] if cell in (" ", marks[name]) else "*"
    lines = []
    for i, row in enumerate(grid):
        y = y1 - (y1 - y0) * i / (height - 1)
        label = f"{y:6.3f} |" if i in (0, height // 2, height - 1) else "       |"
        lines.append(label + "".join(row))
    lines.append("       +" + "-" * width)
    left, right = _human(x0), _human(x1)
    lines.append("        " + left + " " * max(1, width - len(left) - len(right)) + right)
    lines.append("        characters seen; loss in nats/char (t train, v validation)")
    return "\n".join(lines)


def svg_chart(series: Series, title: str = "chargen training") -> str:
    """The same curve as an SVG document."""
    w, h, ml, mr, mt, mb = 720, 420, 70, 20, 40, 50
    pw, ph = w - ml - mr, h - mt - mb
    x0, x1, y0, y1 = _bounds(series) if any(series.values()) else (0, 1, 0, 1)

    def sx(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return mt + (y1 - y) / (y1 - y0) * ph

    colors = {"train": "#1f77b4", "val": "#d62728"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="15">{_escape(title)}</text>',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>']
    for i in range(6):
        y = y0 + (y1 - y0) * i / 5
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{ml - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3f}</text>')
        x = x0 + (x1 - x0) * i / 5
        out.append(f'<text x="{sx(x):.1f}" y="{mt + ph + 18}" text-anchor="middle">{_human(x)}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{h - 10}" text-anchor="middle">characters seen</text>')
    out.append(f'<text x="16" y="{mt + ph / 2}" text-anchor="middle" transform="rotate(-90 16 {mt + ph / 2})">'
               f'loss (nats/char)</text>')
    for k, (name, pts) in enumerate(series.items()):
        if pts:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(f'<polyline fill="none" stroke="{colors[name]}" stroke-width="2" points="{path}"/>')
        out.append(f'<line x1="{ml + pw - 120}" x2="{ml + pw - 100}" y1="{mt + 16 + 18 * k}" y2="{mt + 16 + 18 * k}" '
                   f'stroke="{colors[name]}" stroke-width="2"/>')
        out.append(f'<text x="{ml + pw - 94}" y="{mt + 20 + 18 * k}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_loss_curve(run_dir: str | Path, records: Sequence[dict[str, Any]], title: str) -> Path:
    """Draw `records` (metrics.jsonl) into the run directory's loss.svg; the one writer of that file."""
    path = Path(run_dir) / LOSS_SVG
    # (a title from a file name that is not UTF-8 holds surrogates: each is drawn as "?")
    atomic_write(path, svg_chart(loss_series(records), title=title).encode("utf-8", "replace"))
    return path


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
