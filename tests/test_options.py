"""Every option is declared once (chargen.config) and every front end reads that declaration: the
command line's flags, the Python API's keywords, the server's fields, the playground and README."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

import chargen
from chargen.cli import app, spelling
from chargen.config import (LoadConfig, ModelConfig, RunConfig, SampleConfig, ServeConfig, TrainConfig, declared,
                            request_fields)
from chargen.errors import ChargenError, UsageError

ROOT = Path(__file__).resolve().parent.parent


def command(name: str):
    return typer.main.get_command(app).commands[name]


def flags_of(name: str) -> dict[str, set[str]]:
    """A command's parameters: {parameter name: its flags}."""
    return {p.name: set(p.opts) | set(p.secondary_opts) for p in command(name).params}


@pytest.mark.parametrize("cmd, configs", [("sample", (SampleConfig, LoadConfig)),
                                          ("train", (RunConfig, ModelConfig, TrainConfig)),
                                          ("serve", (ServeConfig, LoadConfig)), ("eval", (LoadConfig,)),
                                          ("score", (LoadConfig,))])
def test_the_command_line_offers_each_declared_option_with_its_help(cmd, configs):
    params = {p.name: p for p in command(cmd).params}
    for cls in configs:
        for name, d in declared(cls).items():
            if not d.opt.cli or name == "corpus":
                continue
            assert name in params, f"{cmd}: no flag for {name}"
            p = params[name]
            if d.opt.flags:
                assert set(d.opt.flags[0].split("/")) <= set(p.opts) | set(p.secondary_opts), (name, p.opts)
            else:
                assert "--" + name.replace("_", "-") in p.opts
            assert d.opt.help.split(".")[0] in (p.help or ""), (name, p.help)
            # A number's default is shown, a zero too (0 == False: once hidden with the unset switches).
            if isinstance(d.default, (int, float)) and not isinstance(d.default, bool):
                assert f"[default: {d.opt.default_help or d.default}]" in p.help, (name, p.help)


def test_the_api_lists_the_options_each_method_takes():
    sample = inspect.signature(chargen.Model.samples).parameters
    top = inspect.signature(chargen.Model.top).parameters
    for name, d in declared(SampleConfig).items():
        if name == "num":
            continue
        assert (d.field in sample) == (d.takes("sample") or not d.opt.requests), name
        assert (d.field in top) == d.takes("top"), name
        if d.field in sample:
            assert sample[d.field].default == d.default


def test_loading_takes_the_declared_options_at_their_defaults():
    for method in (chargen.load, chargen.Model):
        params = inspect.signature(method).parameters
        for name, d in declared(LoadConfig).items():
            assert params[name].default == d.default, (method, name)
    with pytest.raises(UsageError, match="backend must be one of auto, numpy, torch"):
        chargen.load(backend="jax")
    with pytest.raises(ChargenError, match="device must be text"):
        chargen.load(device=0)


def test_the_backend_follows_the_device_and_asks_for_a_gpu_only_for_auto():
    def never() -> bool:
        raise AssertionError("asked whether there is a GPU")

    def load(backend: str = "auto", device=None, gpu: bool = False) -> str:
        config = LoadConfig.from_dict({"backend": backend, "device": device})
        return config.chosen_backend((lambda: gpu) if device == "auto" and backend == "auto" else never)

    assert load() == load(device="cpu") == load("numpy", "auto") == "numpy"
    assert load(device="cuda") == load(device="mps") == load("torch") == load("torch", "auto") == "torch"
    assert load(device="auto", gpu=True) == "torch" and load(device="auto", gpu=False) == "numpy"
    with pytest.raises(UsageError, match="the numpy backend runs on the CPU only"):
        load("numpy", "cuda")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the device files are Linux's")
def test_no_gpu_device_file_means_no_gpu_without_importing_torch():
    """`--device auto` on a Linux machine without a GPU's device file starts as fast as without the
    flag; with one, torch is asked (here: a file that exists, on a machine whose torch has no GPU
    or, on a GPU machine, whatever torch says)."""
    code = ("import sys; from chargen import extras; extras.GPU_DEVICE_FILES = ({!r},); "
            "print(extras.gpu_present(), 'torch' in sys.modules)")
    absent = subprocess.run([sys.executable, "-c", code.format("/nonexistent/nvidia0")], capture_output=True, text=True)
    assert absent.stdout.split() == ["False", "False"], absent.stderr
    present = subprocess.run([sys.executable, "-c", code.format("/dev/null")], capture_output=True, text=True)
    assert present.stdout.split()[1] == "True", present.stderr  # torch was asked


def test_the_server_takes_the_declared_fields():
    from chargen import serve

    for request, fields in (("sample", serve.SAMPLE_FIELDS), ("top", serve.TOP_FIELDS), ("stream", serve.STREAM_FIELDS)):
        assert set(fields) == set(request_fields(request))
        assert "n" in fields and "prompt" in fields and "num" not in fields
    assert "temperature" not in serve.TOP_FIELDS and "regex" not in serve.STREAM_FIELDS
    assert serve.SAMPLE_FIELDS["contains"] == "str | list[str]"  # one text, or several


def test_the_playground_starts_at_the_declared_defaults():
    from chargen.serve import playground_page

    page = playground_page().decode()
    default = declared(SampleConfig)["temperature"].default
    assert f'id="temperature" name="temperature" type="range" min="0" max="2" step="0.05" value="{default:g}"' in page
    assert f">{default:.2f}</output>" in page and "{{" not in page


def test_the_batching_key_is_the_options_declared_as_settings():
    settings = [n for n, d in declared(SampleConfig).items() if d.opt.role == "setting"]
    assert settings == ["temperature", "top_k", "top_p"]
    a, b = SampleConfig(temperature=1.0, top_k=5), SampleConfig(temperature=1.0, top_k=5, seed=3, unique=True)
    assert a.settings() == b.settings() != SampleConfig(temperature=1.0, top_k=6).settings()


def test_an_error_names_the_field_and_each_front_end_spells_it():
    from chargen.serve import spelling as json_spelling

    with pytest.raises(UsageError) as info:
        SampleConfig.of(min_len=-1)
    exc = info.value
    assert exc.options == ["min_len"]
    assert str(exc) == "min_len must be 0 or more (got -1)"
    assert exc.render(spelling) == "--min-len must be 0 or more (got -1)"
    assert exc.render(json_spelling) == "'min_len' must be 0 or more (got -1)"
    assert spelling("num") == "-n/--num" and json_spelling("num") == "'n'"
    assert spelling("start_from") == "--from" and spelling("lines") == "--lines"
    with pytest.raises(chargen.ConfigError, match=re.escape("unknown sample config key(s): 'temprature' (temperature?) (known:")):
        chargen.load().sample(3, temprature=1.0)  # a typo is an error, not a silent default, and says what it meant
    with pytest.raises(chargen.ConfigError, match=re.escape("key(s): 'wibble' (known:")) as info:
        chargen.load().sample(3, wibble=1.0)  # nothing close: no guess
    assert " n, " in str(info.value) and "num" not in str(info.value)  # the keywords Python takes
    with pytest.raises(chargen.ConfigError, match="the number of samples is n"):
        chargen.load().sample(3, num=5)  # the field's name, not the keyword (was a TypeError)
    for prompt, message in ((5, "prompt must be text or a list of text"), (["Ma", 5], "prompt must be a list of text"),
                            (None, "prompt must be text or a list of text")):  # an error, not a TypeError or no samples
        with pytest.raises(chargen.ConfigError, match=re.escape(message)):
            chargen.load().sample(3, prompt=prompt)
    for exclude in (0.5, True, 3):  # any iterable of lines is taken; anything else is an error, not a TypeError
        with pytest.raises(chargen.ConfigError, match=re.escape(f"exclude must be a list of text (got {exclude!r})")):
            chargen.load().sample(3, exclude=exclude)
    assert "Maria" not in chargen.load().sample(200, seed=1, exclude=(x for x in ["Maria"]))
    with pytest.raises(chargen.ConfigError, match=re.escape("n must be a whole number (got [])")):
        list(chargen.load().top([]))  # was a TypeError from comparing the list with 1


def test_the_playground_sends_only_known_fields():
    js = (ROOT / "chargen" / "static" / "playground.js").read_text()
    sent = set(re.findall(r"\bbody\.(\w+)\s*=", js))
    for block in re.findall(r"Object\.assign\(body, \{(.*?)\}\)", js, re.S):
        sent |= set(re.findall(r"(\w+):", block))
    known = set(request_fields("sample")) | set(request_fields("top")) | set(request_fields("stream")) | {"model"}
    assert sent and sent <= known, sent - known
    assert {"temperature", "top_k", "min_len", "n"} <= sent


def test_the_readme_names_only_flags_chargen_has():
    cli = typer.main.get_command(app)
    known = {"--help", "--version", "--install-completion", "--show-completion"}
    for name in cli.commands:
        for flags in flags_of(name).values():
            known |= flags
    text = (ROOT / "README.md").read_text()
    used = set()
    for line in text.splitlines():
        if "chargen " in line or line.startswith("| `-"):
            code = " ".join(re.findall(r"`([^`]*)`", line)) if line.startswith("|") else line
            used |= set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", code.split("torchrun")[0]))
    used -= {"--index-url", "--nproc"}  # pip's and torchrun's
    assert used and used <= known, sorted(used - known)


def test_the_python_names_the_readme_documents_exist():
    import importlib

    text = (ROOT / "README.md").read_text()
    names = set(re.findall(r"`(chargen(?:\.[A-Za-z_]+)+)", text))
    assert {"chargen.sampling.SampleStats", "chargen.training.callbacks.TrainCallbacks"} <= names
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)  # AttributeError: the README names something that is not there
