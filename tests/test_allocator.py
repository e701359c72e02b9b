"""chargen.allocator: the sampler's steps stop page-faulting their arrays back in."""

import subprocess
import sys

import pytest

from chargen.allocator import keep_freed_memory

# Draws names in one process and prints the minor page faults of the second draw (the first, the
# same draw by another Model, warms up: its engine's memory, freed with it, is then touched once
# already; one Model's second draw would step nothing, its engine's prefix cache warm).
DRAW = """
import resource, sys
if sys.argv[1] == "keep":
    from chargen.allocator import keep_freed_memory
    assert keep_freed_memory()
import chargen
model = chargen.load()
model.sample(4000, seed=1, workers=1)
del model
model = chargen.load()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
model.sample(4000, seed=1, workers=1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", DRAW, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_kept_memory_ends_the_page_faults():
    # Measured: 2,400-3,000 faults drawing 4,000 names with glibc's defaults, 500-700 with the
    # setting (12,000 and 50 before the engine stepped only new prefixes: its steps are smaller now).
    default, kept = _faults("default"), _faults("keep")
    assert kept * 3 < default, (kept, default)


@pytest.mark.parametrize("command, makes", [(["sample", "-n", "3"], True), (["eval", "names", "-"], True),
                                           (["info"], False)])
def test_the_sampling_commands_make_the_setting(monkeypatch, command, makes):
    # The setting is process-wide, so the library leaves it to the program: the commands that
    # sample or score make it, before their work (the effect is measured above). With the prefix
    # cache (chargen.sampling.prefixes) the command's steps allocate little, so its page faults
    # no longer tell the setting apart: 1,500-2,100 more for 10,000 more names with it, 2,300-4,500
    # without, most of them the cache's first touches.
    import chargen.allocator
    import chargen.sampling.parallel
    from typer.testing import CliRunner

    from chargen.cli import app

    calls = []
    monkeypatch.setattr(chargen.allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    # (the command in this process would also hold its BLAS to one thread, for every test after this one)
    monkeypatch.setattr(chargen.sampling.parallel, "blas_for_command", lambda weights: None)
    result = CliRunner().invoke(app, command, input="Anna\n")
    assert result.exit_code == 0, result.output
    assert bool(calls) == makes


def test_elsewhere_it_does_nothing(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert keep_freed_memory() is False
