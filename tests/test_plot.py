"""Seeing training: the loss curve (terminal and SVG) and samples at each evaluation."""

import json
import xml.etree.ElementTree as ET

from chargen.config import TrainConfig
from chargen.training.data import read_corpus
from chargen.training.plot import loss_series, svg_chart, terminal_chart
from chargen.training.callbacks import TrainCallbacks
from chargen.training.loop import train

from .conftest import make_names, run


def test_terminal_chart_places_points():
    series = {"train": [(0, 3.0), (100, 2.0), (200, 1.0)], "val": [(0, 3.1), (200, 1.5)]}
    chart = terminal_chart(series, width=20, height=5)
    rows = chart.splitlines()
    assert rows[0].startswith(" 3.") and rows[0].endswith("|*" + " " * 19)  # both first points, top left
    assert rows[4].rstrip().endswith("t")  # train's last, lowest point: bottom right
    assert rows[3].rstrip().endswith("v")  # val's last point, 1.5, one row up
    assert "characters seen" in chart


def test_svg_is_well_formed_with_both_curves():
    series = {"train": [(0, 3.0), (100, 2.0)], "val": [(0, 3.1), (100, 2.5)]}
    root = ET.fromstring(svg_chart(series, title="a <b> & c"))
    assert root.tag.endswith("svg")
    polylines = [el for el in root.iter() if el.tag.endswith("polyline")]
    assert len(polylines) == 2


def test_training_writes_the_curve_and_shows_samples(tmp_path):
    corpus = tmp_path / "n.txt"
    corpus.write_text(make_names(300), encoding="utf-8")
    seen = []

    class Collect(TrainCallbacks):
        def on_eval(self, report):
            seen.append(report)

    config = TrainConfig(batch_size=8, seq_len=32, max_steps=40, eval_every=20, warmup=2, lr=1e-2, sample_every=1)
    train(read_corpus([str(corpus)]), config, {"layers": 1, "hidden": 32, "embed": 8}, out_dir=tmp_path / "run",
          precision="fp32", callbacks=Collect())
    assert len(seen) == 2 and all(isinstance(r.sample, str) and r.sample for r in seen)
    assert len(seen[-1].sample.splitlines()) == 5  # line-oriented: five names
    ET.parse(tmp_path / "run" / "loss.svg")
    p = run(["info", str(tmp_path / "run"), "--plot"])
    assert p.returncode == 0, p.stderr
    assert "characters seen" in p.stdout.decode() and b"loss.svg" in p.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(loss_series(records)["val"]) == 2
    p = run(["info", str(tmp_path / "nope"), "--plot"])
    assert p.returncode == 2 and p.stderr.startswith(b"Error: ")
