"""Packaging: the wheel a release would ship, and the base install (no PyTorch) doing its job.

These build a wheel from the checkout and install it, with its dependencies from the package
index, into a fresh virtual environment without torch: what `pip install chargen` gives a user
who only samples.
"""

import email
import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, env={**ENV, **kw.pop("env", {})}, timeout=600, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    p = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)])
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    (whl,) = out.glob("chargen-*.whl")
    return whl


def test_the_wheel_holds_the_package_and_bundled_model_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {"chargen/_bundled/names.safetensors", "chargen/_bundled/base.safetensors", "chargen/cli.py"} <= set(names)
    assert {"chargen/static/playground.html", "chargen/static/playground.js", "chargen/static/playground.css",
            "chargen/static/favicon.svg"} <= set(names)
    top = {n.split("/")[0] for n in names}
    assert top == {"chargen", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, top
    assert not [n for n in names if "/tests/" in n or n.startswith(("tests/", "corpora/", "benchmarks/", "scripts/"))]
    meta = email.message_from_bytes(zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))))
    requires = meta.get_all("Requires-Dist")
    torch_reqs = [r for r in requires if r.startswith("torch")]
    assert torch_reqs and all("extra ==" in r for r in torch_reqs), requires  # never in the base install
    assert any("extra == 'train'" in r or 'extra == "train"' in r for r in torch_reqs), requires
    assert meta["Requires-Python"] == ">=3.10" and meta["License-Expression"] == "MIT"
    assert {"train", "serve", "test"} <= set(meta.get_all("Provides-Extra"))
    serve_reqs = [r for r in requires if r.startswith(("starlette", "uvicorn", "httptools", "uvloop"))]
    assert serve_reqs and all("extra ==" in r for r in serve_reqs), requires  # never in the base install
    assert len([r for r in serve_reqs if "extra == 'serve'" in r or 'extra == "serve"' in r]) == 4, serve_reqs
    assert any("Programming Language :: Python :: 3" == c for c in meta.get_all("Classifier"))


@pytest.fixture(scope="module")
def base_env(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel and its base dependencies, and no torch."""
    env = tmp_path_factory.mktemp("base-env") / "venv"
    venv.create(env, with_pip=True)
    p = _run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)])
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    probe = _run([str(env / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('torch'))"])
    assert probe.stdout.strip() == b"None", "torch came with the base install"
    return env


def _one_error_line(p, *needles):
    err = p.stderr.decode()
    assert p.returncode != 0 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for needle in needles:
        assert needle in err, (needle, err)


def test_the_base_install_samples_scores_describes_and_exports_without_torch(base_env, tmp_path):
    exe = str(base_env / "bin" / "chargen")
    p = _run([exe, "sample", "-n", "10", "--seed", "1"], cwd=tmp_path)
    assert p.returncode == 0 and p.stderr == b"", p.stderr
    names = p.stdout.decode().splitlines()
    assert len(names) == 10 and all(n and n[0].isupper() for n in names)
    p = _run([exe, "sample", "-n", "5", "--seed", "1", "--regex", "[A-Z][a-z]*(el|ia)", "--max-len", "8"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr  # the regex library comes with the base install
    assert all(n.endswith(("el", "ia")) and len(n) <= 8 for n in p.stdout.decode().splitlines())
    p = _run([exe, "sample", "--top", "3", "--ends-with", "a"], cwd=tmp_path)
    assert p.returncode == 0 and len(p.stdout.decode().splitlines()) == 3, p.stderr

    (tmp_path / "some.txt").write_text("Anna\nMaria\nJohn\n")
    p = _run([exe, "eval", str(base_env / "lib"), str(tmp_path / "some.txt")], cwd=tmp_path)  # not a checkpoint
    _one_error_line(p)
    bundled = next(base_env.glob("lib/python*/site-packages/chargen/_bundled/names.safetensors"))
    p = _run([exe, "eval", str(bundled), str(tmp_path / "some.txt"), "--json"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert 0.5 < json.loads(p.stdout)["loss"] < 4.0

    p = _run([exe, "info", "--json"], cwd=tmp_path)
    assert p.returncode == 0 and json.loads(p.stdout)["line_oriented"] is True, p.stderr
    p = _run([exe, "export", str(bundled), "--tokenizer", str(tmp_path / "tok.json")], cwd=tmp_path)
    assert p.returncode == 0 and json.loads((tmp_path / "tok.json").read_text())["model"]["type"] == "WordLevel"
    # the web export needs nothing beyond the base install, for the bundled model and one quantised now
    p = _run([exe, "export", "names", "--html", str(tmp_path / "n.html"), "--js", str(tmp_path / "n.mjs")], cwd=tmp_path)
    assert p.returncode == 0 and b"exactly the checkpoint's" in b" ".join(p.stderr.split()), p.stderr  # rich wraps
    assert "const MODEL = " in (tmp_path / "n.html").read_text() and (tmp_path / "n.mjs").stat().st_size > 100_000
    p = _run([exe, "export", "names", "--js", str(tmp_path / "f16.mjs"), "--weights", "f16"], cwd=tmp_path)
    assert p.returncode == 0 and b"line loss" in p.stderr, p.stderr

    # --device auto without torch: no GPU to run it on, so numpy on the CPU (it was "needs PyTorch")
    p = _run([exe, "sample", "-n", "3", "--seed", "1", "--device", "auto"], cwd=tmp_path)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 3, p.stderr
    code = ("import sys, chargen; names = chargen.load().sample(n=3, seed=1, contains='an'); "
            "assert len(names) == 3 and 'torch' not in sys.modules, sys.modules.keys(); print('ok')")
    p = _run([str(base_env / "bin" / "python"), "-c", code], cwd=tmp_path)
    assert p.stdout.strip() == b"ok", p.stderr


def test_what_needs_torch_says_how_to_install_it(base_env, tmp_path):
    exe = str(base_env / "bin" / "chargen")
    (tmp_path / "list.txt").write_text("Anna\nMaria\nJohn\n" * 20)
    _one_error_line(_run([exe, "train", "list.txt", "--time", "10s"], cwd=tmp_path),
                    "chargen train needs PyTorch", "pip install 'chargen[train]'", "download.pytorch.org/whl/cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.txt"]  # nothing written
    _one_error_line(_run([exe, "sample", "--backend", "torch"], cwd=tmp_path), "torch backend needs PyTorch")
    _one_error_line(_run([exe, "serve", "--port", "0"], cwd=tmp_path),
                    "chargen serve needs starlette and uvicorn", "pip install 'chargen[serve]'")
    code = "import chargen\ntry:\n    chargen.train(['list.txt'])\nexcept chargen.MissingExtra as e:\n    print(e)"
    p = _run([str(base_env / "bin" / "python"), "-c", code], cwd=tmp_path)
    assert b"training needs PyTorch" in p.stdout, p.stderr
