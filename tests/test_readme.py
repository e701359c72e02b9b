"""The README's console examples are real output: each `$ chargen sample ...` or `... | chargen
score ...` on a bundled model (seeded, or exact search), run by bash with the installed command,
prints what the README shows, where `...` within a line stands for any text and a line of `...`
for any further lines; so do the Python session and the `curl` requests to a `chargen serve`.
(Training examples and models or files of your own are left out: they depend on time or on your
files.)"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO, chargen_exe, start_server

BUNDLED = ("names", "base")


def console_examples() -> list[tuple[str, list[str]]]:
    """(command, the lines the README shows after it) for every `$ ` line of its console blocks."""
    examples = []
    for block in re.findall(r"```console\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        lines = block.rstrip("\n").split("\n")
        starts = [i for i, line in enumerate(lines) if line.startswith("$ ")] + [len(lines)]
        for a, b in zip(starts, starts[1:]):
            examples.append((lines[a][2:], lines[a + 1 : b]))
    return examples


def reproducible(command: str) -> bool:
    """A sampling or scoring command on a bundled model with a seed (or no randomness: top, score)."""
    words = re.sub(r"\s+#.*$", "", command)
    if not re.search(r"(^|\| )chargen (sample|score)\b", words) or "curl" in words:
        return False
    model = re.search(r"(?:-c |chargen score )(\S+)", words)
    if model and model.group(1) not in BUNDLED:
        return False
    if re.search(r"\S+\.(txt|tsv)\b", words):  # a file of the reader's own
        return False
    return "--seed" in words or "--top" in words or "chargen score" in words


DECIMAL = re.compile(r"(-?\d+\.\d{3,})")


def _literal(text: str) -> str:
    """A regex for `text` where a number of 3 or more decimals may be off by one in its last
    decimal: a score computed in float32 rounds either way of a boundary on one CPU or another
    (Marya's -8.72105 prints -8.7211 on one EPYC and -8.7210 on another)."""
    def near(number: str) -> str:
        places = len(number.split(".")[1])
        value = round(float(number) * 10 ** places)
        return "(?:" + "|".join(re.escape(f"{(value + d) / 10 ** places:.{places}f}") for d in (-1, 0, 1)) + ")"

    return "".join(near(part) if i % 2 else re.escape(part) for i, part in enumerate(DECIMAL.split(text)))


def shows(shown: list[str], printed: list[str]) -> bool:
    """Whether `printed` is what `shown` shows, its `...` elisions included."""
    pattern = "".join(r"(?:[^\n]*\n)*" if line == "..." else
                      ".*".join(map(_literal, line.split("..."))) + r"\n" for line in shown)
    return re.fullmatch(pattern, "".join(line + "\n" for line in printed)) is not None


EXAMPLES = [(cmd, shown) for cmd, shown in console_examples() if reproducible(cmd)]


def test_the_readme_has_reproducible_examples():
    assert len(EXAMPLES) >= 10, [cmd for cmd, _ in EXAMPLES]
    assert shows(["{\"a\": 1, ...}", "..."], ['{"a": 1, "b": 2}', "x", "y"]) and shows(["a...c"], ["abc"])
    assert not shows(["{\"a\": 1, ...}"], ['{"a": 2}']) and not shows(["a", "..."], ["b"])
    assert not shows(["a"], ["a", "b"])
    assert shows(["Marya\t-8.7211\t6"], ["Marya\t-8.7210\t6"]) and shows(["x 0.100"], ["x 0.099"])
    assert not shows(["Marya\t-8.7211\t6"], ["Marya\t-8.7213\t6"]) and not shows(["x 12"], ["x 13"])


@pytest.mark.parametrize("command, shown", EXAMPLES, ids=[cmd[:60] for cmd, _ in EXAMPLES])
def test_a_readme_example_prints_what_the_readme_shows(command, shown, tmp_path):
    bin_dir = str(Path(chargen_exe()).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "COLUMNS": "100"}
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in shown if line.startswith("note: ")]
    assert shows([line for line in shown if not line.startswith("note: ")], proc.stdout.splitlines()), proc.stdout
    # stderr's notes as the README shows them, however rich wraps them
    assert " ".join(proc.stderr.split()) == " ".join(" ".join(notes).split())


def test_the_readmes_python_session_prints_what_the_readme_shows(monkeypatch):
    """The Python API block, as doctest runs it (`...` elides): every example that shows output,
    and the lines before them that set up what they use (training and your own checkpoints left out)."""
    import doctest

    block = re.search(r"## Python API.*?```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    examples = doctest.DocTestParser().get_examples(block)
    kept = [e for e in examples if e.want or re.match(r"(import chargen|model = chargen\.load\(\))", e.source)]
    assert len(kept) >= 8 and any("score" in e.source for e in kept)
    monkeypatch.chdir(REPO)  # it reads corpora/names.txt
    test = doctest.DocTest(kept, {}, "README.md", None, None, None)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    out: list[str] = []
    runner.run(test, out=out.append)
    assert runner.failures == 0, "".join(out)


def test_the_readmes_curl_examples_get_what_the_readme_shows():
    """Each `curl ... localhost:8000/v1/...` example on the bundled model, against `chargen serve`
    (the installed command, on a free port): the body the README shows."""
    pytest.importorskip("starlette", reason="chargen serve needs the serve extra: pip install -e '.[test]'")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    examples = [(cmd, shown) for cmd, shown in console_examples()
                if cmd.startswith("curl ") and "localhost:8000" in cmd and '"model"' not in cmd]
    assert len(examples) >= 3
    proc, url = start_server()
    try:
        for command, shown in examples:
            got = subprocess.run(["bash", "-c", command.replace("http://localhost:8000", url).replace("localhost:8000", url)],
                                 capture_output=True, text=True, timeout=60)
            assert got.returncode == 0, got.stderr
            assert shows(shown, got.stdout.rstrip("\n").split("\n")), (command, got.stdout)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
