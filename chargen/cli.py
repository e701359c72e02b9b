"""The command line: parse, call the library, print, and map ChargenError to `Error: ...` + exit code.

stdout carries generated text only; everything else (progress, tables, notices, errors) goes to
one rich console on stderr. torch and numpy are imported inside the commands that need them, so
`chargen --help` stays instant.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import io
import json
import math
import os
import re
import sys
import time
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer

from ._version import __version__
from .config import (Declared, given_options, LoadConfig, ModelConfig, RunConfig, SampleConfig, ServeConfig, TrainConfig,
                     declared, counted, format_duration, merge_train_options, parse_duration)
from .errors import ChargenError, TrainingInterrupted, UsageError, VocabularyError

class _Commands(typer.core.TyperGroup):
    """chargen's commands, with one check before a command parses its arguments: an option that
    takes a value, given another of its options instead (`--resume --time 5s`), is a missing
    value, said so, not a run in a directory called '--time'."""

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None and not ctx.resilient_parsing:  # (resilient: completing a word, say nothing)
            _check_values(command, rest)
        return name, command, rest


def _check_values(command, args: list[str]) -> None:
    """Raise click's usage error where an option's value is one of the command's own flags."""
    flags = {flag: p for p in command.params for flag in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])
             if type(p).__name__.endswith("Option")}
    i = 0
    while i < len(args) - 1 and args[i] != "--":
        p = flags.get(args[i])
        if p is not None and not p.is_flag and not p.count:
            other = args[i + 1].split("=", 1)[0]
            if other in flags:
                import click

                long = next((f for f in p.opts if f.startswith("--")), args[i])
                dash = f"a value that starts with '-' is written {long}=VALUE; " if p.type.name in ("str", "text") else ""
                raise click.UsageError(f"{args[i]} needs a value, and {other} is an option of chargen {command.name} "
                                       f"({dash}see: chargen {command.name} --help)")
            i += 2
        else:
            i += 1


app = typer.Typer(
    cls=_Commands,
    name="chargen",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_console = None


def console():
    """The one stderr console (created lazily: rich costs import time). Into a file or a pipe its
    lines are not wrapped (a log keeps one note a line, for grep); tables keep their width."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True, highlight=False, soft_wrap=not _terminal(sys.stderr))
    return _console


# --- options from their declarations ------------------------------------------------------------

_CONFIGS = (SampleConfig, TrainConfig, ModelConfig, RunConfig, ServeConfig, LoadConfig)


DASH = Path("-")  # a file named `-`: stdout for an export (`--js -`), stdin for `--exclude -`
# The checkpoint a command reads (the bundled models' names: chargen.checkpoint.BUNDLED, checked by a test).
CHECKPOINT_HELP = "Checkpoint file, run directory (its best), or a bundled model: names, base."
CHECKPOINT_DEFAULT = " [default: $CHARGEN_CHECKPOINT, else the bundled names model]"
LABEL_HELP = declared(SampleConfig)["label"].opt.help + " [default: " + declared(SampleConfig)["label"].opt.default_help + "]"


def _bundled_here(spec: Optional[str]) -> Optional[str]:
    """A checkpoint as given; where it is a bundled model's name that a run of the user's own also
    has (`chargen train names.txt` writes checkpoints/names, and `-c names` is the bundled model),
    a note says which one is read and how to name the other."""
    if spec and (Path("checkpoints") / spec).is_dir():
        from .checkpoint import checkpoint_path  # (its rule: a bundled name, where no file of that name is here)

        if checkpoint_path(spec) != Path(spec):
            console().print(f"note: {spec} is the bundled {spec} model; your run checkpoints/{spec} is "
                            f"-c checkpoints/{spec}", highlight=False, markup=False)
    return spec


def complete_label(ctx: typer.Context, incomplete: str) -> list[str]:
    """`--label <TAB>` (with the shell's completion installed: chargen --install-completion): an
    adapted model's own labels, then the model's languages, kinds and labels, that start with what
    is typed, the last term of a blend completed; the model is -c or the CHECKPOINT argument, else
    the default. Nothing where it cannot be read: a completion never fails."""
    from .checkpoint import checkpoint_path, default_checkpoint, read_checkpoint
    from .sampling.labels import label_asks

    try:
        spec = ctx.params.get("checkpoint") or (ctx.args[0] if ctx.args else None)  # (a half-parsed argument)
        ckpt = read_checkpoint(checkpoint_path(spec) if spec else default_checkpoint())
    except Exception:  # noqa: BLE001 - a half-typed path, a file that is no checkpoint: no suggestions
        return []
    names, own = ckpt.labels or [], ckpt.own_labels or []  # an adapted model's own first
    head, comma, last = incomplete.rpartition(",")
    choices = dict.fromkeys(c for c in [*label_asks(names, own), *names] if " " not in c)  # (a space ends a word)
    return [head + comma + c for c in choices if c.startswith(last)]


def spelling(name: str) -> str:
    """How the command line spells an option named in a message: its flag (`-n/--num`, `--from`)."""
    for cls in _CONFIGS:
        d = declared(cls).get(name)
        if d is not None:
            flags = [f.split("/")[0] for f in d.flags]
            return "/".join(flags) if not flags[0].startswith("--") else flags[0]
    return "--" + name.replace("_", "-")


def _typer_option(d: Declared, hint: Any, cli_default: Any) -> inspect.Parameter:
    """One declared option as a Typer parameter: its flags, help, panel and shown default."""
    shown = not (d.default is None or d.default is False or d.default == [])  # 0 is shown (0 == False)
    default = d.opt.default_help or (d.default if shown else "")
    help_text = d.opt.help + (f" [default: {default}]" if default != "" else "")
    flags = d.opt.flags  # none given: Typer derives --kebab-name (and --no-x for a switch)
    option = typer.Option(*flags, help=help_text, rich_help_panel=d.opt.panel or None, show_default=False,
                          autocompletion=complete_label if d.name == "label" else None)
    return inspect.Parameter(d.name, inspect.Parameter.KEYWORD_ONLY, default=cli_default,
                             annotation=Annotated[hint, option])


def with_options(*configs: type, skip: tuple[str, ...] = ()) -> Callable:
    """Add the declared options of `configs` to a command: the function takes them as **options,
    each None (a switch: False) when not given, so a config file or the library's default stands."""

    def decorate(func: Callable) -> Callable:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
        added = []
        for cls in configs:
            hints = typing.get_type_hints(cls)
            for name, d in declared(cls).items():
                if d.opt.cli and name not in skip:
                    hint = hints[name]
                    if hint is bool:
                        added.append(_typer_option(d, bool, False))
                    else:
                        optional = hint if type(None) in typing.get_args(hint) else Optional[hint]
                        added.append(_typer_option(d, optional, None))
        func.__signature__ = inspect.Signature(own + added)  # type: ignore[attr-defined]
        return func

    return decorate


def _load_for_command(checkpoint, options: dict[str, Any]):
    """chargen.load for a command that steps the network (sample, score, eval), taking the
    LoadConfig flags out of `options`, with numpy's BLAS threads set for a command
    (chargen.sampling.parallel.blas_for_command)."""
    from .api import load
    from .sampling.parallel import blas_for_command

    model = load(checkpoint, **loading(options))
    blas_for_command(model.checkpoint.model_config.matmul_weights)
    return model


def loading(options: dict[str, Any]) -> dict[str, Any]:
    """The LoadConfig flags given among a command's options (chargen.load's keywords), taken out of them."""
    return {name: value for name in declared(LoadConfig) if (value := options.pop(name, None)) is not None}


def given(options: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line (config.given_options: --no-lines is given)."""
    return given_options(options, SampleConfig, ServeConfig)


def error_line(message: str) -> None:
    # Plain write, not rich markup: a message may hold brackets. It stays one line whatever it quotes.
    one_line = message.replace("\r", "\\r").replace("\n", "\\n")
    sys.stderr.write(f"Error: {one_line}\n")
    sys.stderr.flush()


def _version_callback(value: bool) -> None:
    if value:
        sys.stdout.write(f"chargen {__version__}\n")
        raise typer.Exit()


# The commands that sample or score with numpy keep the memory each step frees (chargen.allocator).
KEEP_FREED_MEMORY = ("sample", "score", "eval", "serve")


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train a character-level LSTM on your own text, and sample from it.

    Examples:

    \b
      chargen sample -n 10 | sort -u              # names from the bundled model
      chargen train corpora/names.txt --time 5m   # your own: writes checkpoints/names/
      chargen sample -c checkpoints/names -n 10
    """
    if ctx.invoked_subcommand in KEEP_FREED_MEMORY:
        from .allocator import keep_freed_memory

        keep_freed_memory()


# --- train ------------------------------------------------------------------------------------


class _ProgressCallbacks:  # a chargen.training.TrainCallbacks, without importing torch here
    """Draws training on stderr: a live bar, a line per evaluation, a summary table at the end."""

    def __init__(self, quiet: bool):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.quiet = quiet
        self.con = console()
        self.progress = Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.con,
            transient=False,
            redirect_stdout=False,  # stdout is for generated text only; see docs in STYLE.md
            redirect_stderr=False,
            disable=quiet or not self.con.is_terminal,  # in a log, the evaluation lines are the progress
        )
        self.task = None

    def __enter__(self):
        return self  # the bar starts with training (on_start): an error before it stays one line

    def __exit__(self, *exc):
        if self.task is not None:
            self.progress.__exit__(*exc)

    def on_notice(self, message: str) -> None:
        if not self.quiet:
            self.progress.console.print(f"[yellow]note:[/] {message}", markup=True, highlight=False)

    def on_start(self, r) -> None:  # a chargen.training.callbacks.StartReport
        if self.quiet:
            return
        m = r.model
        resumed = f", resumed at step {r.resumed_from_step}" if r.resumed_from_step is not None else ""
        more = f" and {r.files - 1:,} more file{'s' if r.files > 2 else ''}" if r.files > 1 else ""
        self.con.print(
            f"{r.corpus}{more}: {r.train_chars:,} train / {r.val_chars:,} val chars, vocab {m.vocab_size}, "
            f"unigram entropy {r.unigram_entropy:.3f} nats" + (", line-oriented" if r.line_oriented else ""),
            highlight=False, markup=False,
        )
        stop = []
        if r.max_steps:
            stop.append(f"{r.max_steps:,} step{'s' if r.max_steps != 1 else ''}")
        if r.time_budget:
            stop.append(format_duration(r.time_budget))
        if r.patience:
            stop.append(f"{r.patience} evaluation{'s' if r.patience != 1 else ''} without a better val loss")
        self.con.print(
            f"model: {m.describe()}, "
            f"{r.parameters:,} parameters; {r.layout()}; "
            f"{r.device} {r.precision}; stop at {' or '.join(stop)}{resumed} -> {r.out_dir}",
            highlight=False, markup=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=1000, status="starting")

    def on_step(self, r) -> None:  # a chargen.training.callbacks.StepReport
        if self.task is None:
            return
        val = f" val {r.val_loss:.3f}" if math.isfinite(r.val_loss) else ""
        status = f"step {r.step:,} loss {r.loss:.3f}{val} | {r.chars_per_sec:,.0f} chars/s"
        self.progress.update(self.task, completed=min(1000, int(r.progress * 1000)), status=status)

    def on_eval(self, r) -> None:  # a chargen.training.callbacks.EvalReport
        if self.quiet or not (r.improved or r.written or r.sample):
            return  # a short list evaluated every step shows its better ones, and one every 25 steps
        mark = " *" if r.improved else ""
        self.progress.console.print(
            f"step {r.step:>7,}  train {f'{r.train_loss:.4f}' if math.isfinite(r.train_loss) else '-':>6}  "
            + (f"val {r.val_loss:.4f} nats ({r.val_bpc:.3f} bpc){mark}" if math.isfinite(r.val_loss) else ""),
            highlight=False, markup=False,
        )
        if r.sample:
            from rich.text import Text

            self.progress.console.print(Text(r.sample, style="dim"), highlight=False)

    def should_stop(self, step: int) -> bool:  # (Ctrl-C and SIGTERM are caught by the loop itself)
        return getattr(sys.stderr, "lost", False)  # the progress's reader went away (_Notes)

    def on_end(self, r) -> None:  # a chargen.training.callbacks.EndReport
        if self.task is not None and not r.interrupted:
            self.progress.update(self.task, completed=1000)
        self.summary = r


def _print_curve(run_dir: Path) -> None:
    from .training.plot import LOSS_SVG, loss_series, read_metrics, terminal_chart

    try:
        records = read_metrics(run_dir)
    except ChargenError:
        return
    if len(records) >= 2:
        sys.stderr.write(terminal_chart(loss_series(records)) + f"\n        curve: {Path(run_dir) / LOSS_SVG}\n")


def _summary_table(r):  # a chargen.training.callbacks.EndReport
    from rich.table import Table

    t = Table(title="chargen train", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("run directory", r.run_dir)
    t.add_row("steps", f"{r.steps:,} ({r.chars_seen:,} characters, {r.epochs} full epochs)")
    if math.isfinite(r.best_val_loss):
        t.add_row("best val loss", f"{r.best_val_loss:.4f} nats/char, {r.best_val_loss / math.log(2):.4f} bits/char")
    t.add_row("unigram entropy", f"{r.unigram_entropy:.4f} nats/char (a model that ignores context)")
    if r.chars_per_sec > 0:  # not for a resumed run that had ended: it trained no step
        t.add_row("speed", f"{r.chars_per_sec:,.0f} chars/s ({r.device} {r.precision}, "
                           f"{r.chars_per_sec * r.flops_per_char / 1e9:,.1f} GFLOP/s)")
    t.add_row("time", format_duration(r.elapsed))
    if r.stopped:
        t.add_row("stopped", r.stopped)
    return t


@app.command()
@with_options(RunConfig, ModelConfig, TrainConfig, skip=("corpus",))
def train(
    corpus: Annotated[Optional[list[str]], typer.Argument(help=declared(RunConfig)["corpus"].opt.help, show_default=False)] = None,
    time: Annotated[Optional[str], typer.Option("--time", help=declared(TrainConfig)["time"].opt.help + " [default: "
                                                + declared(TrainConfig)["time"].opt.default_help + "]")] = None,
    config_file: Annotated[Optional[str], typer.Option("--config", help="Read options from a TOML file (keys named like the flags); flags given here win.")] = None,
    **options: Any,
) -> None:
    """Train a character-level LSTM on text files.

    Writes best.safetensors (best validation loss), last.safetensors (for --resume) and
    metrics.jsonl into the run directory. Ctrl-C saves and tells how to resume.

    Example:

    \b
      chargen train corpora/shakespeare.txt --time 5m
    """
    from .extras import require_torch

    require_torch("chargen train")
    options = merge_train_options({**options, "corpus": corpus, "time": parse_duration(time) if time is not None else None},
                            config_file)
    quiet = bool(options.pop("quiet", False))
    corpus = options.pop("corpus", [])
    _bundled_here(options.get("start_from"))
    if "-" in corpus and not quiet:
        _typed_stdin_note("- reads the corpus you type, until Ctrl-D")

    from .api import train as api_train
    from .training.distributed import rank_from_env

    rank = rank_from_env()  # under torchrun, rank 0 alone shows progress
    quiet = quiet or rank != 0
    callbacks = _ProgressCallbacks(quiet)
    try:
        with callbacks:
            out_dir = api_train(corpus, callbacks=callbacks, **options)
    except TrainingInterrupted as stop:
        if not quiet and hasattr(callbacks, "summary"):
            console().print(_summary_table(callbacks.summary))
        if rank == 0 and stop.run_dir is None:
            sys.stderr.write(f"Stopped by {stop.reason} before training began; nothing was written.\n")
        elif rank == 0:
            sys.stderr.write(f"Stopped by {stop.reason}; saved {stop.run_dir / 'last.safetensors'}. Resume with:\n"
                             f"  chargen train --resume {stop.run_dir}\n")
        raise typer.Exit(stop.exit_code) from None
    if not quiet and hasattr(callbacks, "summary"):
        console().print(_summary_table(callbacks.summary))
        _print_curve(out_dir)
    if not quiet:
        console().print(f"Sample from it: chargen sample -c {out_dir}", highlight=False, markup=False)


# --- sample -----------------------------------------------------------------------------------


class _PipeClosed(Exception):
    """The reader of stdout went away (`| head`): stop quietly, exit 0."""


class _Output:
    """stdout, flushed per line by default; a closed pipe (e.g. `| head`) ends the command quietly.
    Every command's output goes through one (or `_piped` for a rich table)."""

    def __init__(self) -> None:
        self.stream = sys.stdout

    def write(self, text: str, flush: bool = True) -> None:
        if self.stream is None or isinstance(self.stream, _Unread):  # stdout closed (`>&-`): nobody is reading
            raise _PipeClosed()
        with _piped(self.stream):
            self.stream.write(text)
            if flush:
                self.stream.flush()

    def flush(self) -> None:
        self.write("", flush=True)


@contextlib.contextmanager
def _piped(stream) -> Iterator[None]:
    """Writes to stdout whose reader went away raise _PipeClosed: click would turn EPIPE into exit
    code 1, and `| head` is no failure."""
    try:
        yield
    except BrokenPipeError:
        raise _PipeClosed() from None
    except UnicodeEncodeError:
        raise  # (a ValueError too, but no closed pipe: main says what stdout cannot write)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValueError) or stream is None or stream.closed:
            raise _PipeClosed() from None
        raise ChargenError(f"cannot write to stdout ({exc.strerror or exc})") from None  # a full disk, /dev/full


@app.command()
@with_options(SampleConfig, LoadConfig)
def sample(
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", "-c", help=CHECKPOINT_HELP + CHECKPOINT_DEFAULT, callback=_bundled_here)] = None,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", "--starts-with", help="Text each sample starts with (the model's distribution given that start, so also the exact constraint); repeat for several (-n samples each, in order); - reads one prompt per line from stdin.", show_default=False)] = None,
    exclude: Annotated[Optional[str], typer.Option(help="Never print a line of this UTF-8 file (like --novel, for any list); - reads the lines from stdin.", rich_help_panel="Constraints (line samples)")] = None,
    top: Annotated[Optional[int], typer.Option(help="Print the N most probable line samples instead of drawing (exact best-first search at temperature 1; constraints, prompt, --novel and --exclude apply), best first.", rich_help_panel="Constraints (line samples)", show_default=False)] = None,
    output_format: Annotated[str, typer.Option("--format", help="text, or jsonl (text, prompt, logprob, logprob_per_char, chars; with constraints also kept and logprob_guided, and p_constraints with its bounds p_constraints_lower/_upper from the adaptive exact sampler).")] = "text",
    **options: Any,
) -> None:
    """Generate text from a trained model, one sample per line.

    Examples:

    \b
      chargen sample -n 10                # ten names from the bundled model
      chargen sample -n 1000 --unique | sort | head
      chargen sample -n 5 --max-len 8 --ends-with a --seed 1
      chargen sample --top 20 --ends-with a --format jsonl
      chargen sample -c checkpoints/shakespeare -p "ROMEO:" -l 500
    """
    if output_format not in ("text", "jsonl"):
        raise UsageError(f"`format` must be text or jsonl (got {output_format!r})")
    from .checkpoint import default_checkpoint
    from .sampling.drawing import SampleStats

    model = _load_for_command(checkpoint if checkpoint is not None else default_checkpoint(), options)
    options = given(options)
    prompt = prompt or [""]
    if "-" in prompt and len(prompt) > 1:
        raise UsageError("--prompt - reads the prompts from stdin; give it alone, or give the prompts as flags")
    exclude = _named_file("--exclude", exclude, "stdin")
    if exclude == DASH and prompt == ["-"]:
        raise UsageError("--prompt - and --exclude - both read stdin; give one of them a file")
    if exclude is not None:
        options["exclude"] = _read_lines(exclude)
    if top is not None and "num" in options:
        raise UsageError(f"--top {top} is how many it lists; drop -n")
    num = options.pop("num", 1)
    # drawn under constraints (--top searches under them instead); a bad option is an Error: before any note
    constrained = bool(SampleConfig.of(**options).given("constraint")) and top is None
    line_mode = model.line_oriented if options.get("lines") is None else options["lines"]
    # --prompt -: each prompt drawn as it is typed (Enter) or arrives through a pipe; --top searches them all at once
    stdin_fd = _fileno(sys.stdin) if prompt == ["-"] and top is None else None
    typed = stdin_fd is not None and sys.stdin.isatty()
    lazy = stdin_fd is not None
    check = functools.partial(model.check_prompt, **options)
    prompts = _TypedPrompts(check) if typed else _ArrivingPrompts(stdin_fd, check) if lazy else \
        _read_prompts() if prompt == ["-"] else prompt
    out = _Output()
    stats = SampleStats()
    streaming = False
    count = None
    with contextlib.ExitStack() as searching:
        if top is not None:  # a long search (the base model's blends) says on a terminal how far it has got
            progress = searching.enter_context(_progress_bar("--top", f"{top:,}:", None, unit="prefixes searched",
                                                             shown=not _terminal(sys.stdout), delay=1.0))
            samples = model.top(top, prompts, progress=progress, **options)
        else:
            streaming = output_format == "text" and not line_mode and num == 1 and len(prompts) == 1
            samples = model.samples(num, iter(prompts) if lazy else prompts, stats=stats, **options,
                                    on_char=(lambda ch: out.write(ch, flush=ch == "\n")) if streaming else None)
        # the notes once the options are checked (model.samples and model.top check them when called): a bad
        # one is the only line
        _untrained_note(model.checkpoint)
        _label_note(model, options.get("label"))
        if top is None:
            mix = model.label_mix(options.get("label"))
            _greedy_note(options.get("temperature"), num, constrained, line_mode, len(mix.names) if mix else 1)
            if streaming:
                out.write(prompts[0], flush=True)
            elif _terminal(sys.stderr) and not _terminal(sys.stdout) and not lazy:  # (lazy: how many is not known)
                count = searching.enter_context(_Count(num * len(prompts)))
        _print_samples(out, samples, output_format, jsonl_constrained=constrained, lines=line_mode or top is not None,
                       streaming=streaming, count=count)
    note = stats.constraints_note(len(prompts)) if constrained and not options.get("guided") else None
    if note:
        console().print(note, highlight=False, markup=False, soft_wrap=True)
    if typed and prompts.failed:
        raise typer.Exit(prompts.failed)


def _untrained_note(ckpt) -> None:
    """A new run's checkpoint before its first step (asked for while the run begins, before its
    first evaluation writes best.safetensors) holds the random weights a model starts from: say so,
    or its samples look like a broken model's."""
    if ckpt.info.get("step") == 0 and not ckpt.info.get("from"):
        console().print(f"note: {ckpt.path} has trained no step yet (a run that has just begun; its first evaluation "
                        f"writes best.safetensors): its weights are random, and so are its samples",
                        highlight=False, markup=False, soft_wrap=True)


def _greedy_note(temperature: Optional[float], num: int, constrained: bool, line_mode: bool, labels: int) -> None:
    """At --temperature 0, what greedy drawing gives: the same sample every time (each of the
    `labels` a blend draws from its own), and under constraints a path of likeliest allowed
    characters (which can run to --length), not the likeliest sample that satisfies them: --top
    says where to find those."""
    if temperature != 0 or not (constrained or num > 1):
        return
    top = f"; --top {num if num > 1 else 5} lists the likeliest names" if line_mode else ""
    if constrained:
        what = ("each step takes the likeliest character the constraints allow, which need not make a likely sample"
                + (top.replace("names", "names that satisfy them") if top else ""))
    else:
        what = ("every sample is the same (the likeliest character at each step)" if labels == 1 else
                f"every sample of a label is the same (the likeliest character at each step; each sample draws its "
                f"label from the {labels} asked)") + top
    console().print(f"note: at --temperature 0 {what}", highlight=False, markup=False, soft_wrap=True)


def _labels_row(labels: dict) -> str:
    """A labelled model's labels in `info`: each with its lines and held-out loss, or where there
    are many, what --label can ask for by a part (their kinds and languages)."""
    from .sampling.labels import label_summary, loose_labels

    names = labels["names"]
    own = _shown(labels.get("own"))
    note = " (the ones its own run trained: what no --label draws)" if own and labels["own"] == loose_labels(names) else ""
    summary = label_summary(names, loose_note=note)
    if summary and note:  # the summary names the own labels and says there what they are
        own = None
    count = f"{len(names)} (with no --label, the ones its own run trained: {own})" if own else f"{len(names)}"
    if summary:
        return (f"{count}: {summary} (--label asks by a name or by parts: "
                f"{_label_examples(names, labels['lines'])}; chargen info --labels lists them all)")
    shown = [f"{n} ({c:,} lines" + (f", val {labels['val_loss'][n]:.4f}" if n in labels.get("val_loss", {}) else "")
             + ")" for n, c in zip(names, labels["lines"])]
    return (f"{count}: " + ", ".join(shown[:12]) + (", ..." if len(shown) > 12 else "")
            + " (sample with --label; chargen info --labels lists all)")


def _shown(names: Optional[list[str]], most: int = 6) -> Optional[str]:
    """Some labels, at most `most` shown; None for none."""
    return ", ".join(names[:most]) + (f", ... ({len(names)})" if len(names) > most else "") if names else None


def _label_note(model, label: Optional[str], scoring: bool = False) -> None:
    """Which labels a --label whose terms are not all labels' names draws from, and how much of
    each: `--label greek` is mostly Greek places, by their share of the training lines; `--label
    "french cities"` is Algeria's (the one French-speaking locale with a list of cities).
    With no --label, on a terminal: that there are labels to ask for (a new user's `chargen sample
    -c base` mixes every language and script); `scoring` (score, eval): that every line is scored
    under each of them, a label's work times their number."""
    if not model.labels:
        return
    if not label and scoring:
        if _terminal(sys.stderr) and len(model.labels) > 1:
            console().print(f"note: with no --label each line is scored under all {len(model.labels)} labels (its "
                            f"probability when its label is unknown), {len(model.labels)} times the work of one: "
                            f"--label L scores under L alone (chargen info --labels lists them)",
                            highlight=False, markup=False, soft_wrap=True)
        return
    if not label:
        if _terminal(sys.stderr):
            ckpt = model.checkpoint
            examples = _label_examples(model.labels, ckpt.label_counts)
            own = _shown(ckpt.own_labels)
            drawn = (f"with no --label draws from the labels its own run trained ({own}), as trained; it has "
                     f"{len(model.labels)} in all, ask for others: {examples}" if own else
                     f"this model has {len(model.labels)} labels and with no --label draws from all of them, as "
                     f"trained; ask for some: {examples}")
            console().print(f"note: {drawn} (chargen info lists them)", highlight=False, markup=False, soft_wrap=True)
        return
    mix = model.label_mix(label)
    if all(term.split("=", 1)[0].strip() in model.labels for term in label.split(",")):
        return  # every term a label's name: what it draws is what it says
    order = sorted(range(len(mix.names)), key=lambda i: -mix.weights[i])
    shares = ", ".join(f"{mix.names[i]} {mix.weights[i]:.2g}" for i in order[:6]) + (", ..." if len(order) > 6 else "")
    drawn = mix.names[0] if len(mix.names) == 1 else f"{len(mix.names)} labels: {shares}"
    console().print(f"note: --label {label} draws from {drawn}", highlight=False, markup=False, soft_wrap=True)


def _label_examples(names: list[str], counts: list[int]) -> str:
    """--label examples from the model's largest label: its language, then its language and kind in
    words ("english first"); else its name. Then, where labels have territories, the largest such
    label's territory and kind (usa:street)."""
    from .sampling.labels import label_languages, label_territories, territory_name

    by_size = [name for _, name in sorted(zip(counts, names), reverse=True)]
    largest = by_size[0]
    language = next(iter(label_languages([largest]).values()), None)
    kind = largest.rsplit(":", 1)[1] if ":" in largest else None
    examples = [f"--label {largest}"] if language is None else \
        [f"--label {language}"] + ([f'--label "{language} {kind}"'] if kind else [])
    placed = next((name for name in by_size if ":" in name and label_territories([name])), None)
    if placed:
        territory, kind = territory_name(next(iter(label_territories([placed])))), placed.rsplit(":", 1)[1]
        examples.append(f"--label {territory}:{kind}" if " " not in territory else f'--label "{territory} {kind}"')
    return ", ".join(examples)


class _TypedPrompts:
    """`--prompt -` typed at a terminal: each prompt read as Enter is pressed, its samples drawn
    and printed before the next is read (the same samples as the lines piped in: prompt j draws
    from the seed's j-th key either way); its length is the prompts read so far. A prompt that
    `check` refuses (an unknown character) is said on stderr and the next one read, as a shell
    goes on after a typo; the command then exits with that error's code (`failed`)."""

    def __init__(self, check: Callable[[str], None]) -> None:
        self.read = 0
        self.check = check
        self.failed = 0  # the exit code of the first prompt refused
        console().print("note: type a prompt and Enter for its samples; Ctrl-D ends", highlight=False, markup=False)

    def __iter__(self) -> Iterator[str]:
        for line in _typed_lines():
            try:
                self.check(line)
            except ChargenError as exc:  # (said as main says it)
                error_line(exc.render(spelling))
                self.failed = self.failed or exc.exit_code
                continue
            self.read += 1
            yield line

    def __len__(self) -> int:
        return self.read


class _ArrivingPrompts:
    """`--prompt -` from a pipe or a file: the prompts that have arrived are checked together
    (`check`), then drawn and printed, then the next that have: `tail -f prompts | chargen sample
    -p -` answers each as it comes, where it read to the end of its input first, and a file or a
    writer that is done has every prompt checked before the first sample, as before. The samples
    are those a list of the same prompts gives; its length is the prompts read so far."""

    def __init__(self, fd: int, check: Callable[[list[str]], None]) -> None:
        from .training.ingest import ArrivingLines

        self.lines = ArrivingLines(fd)
        self.check = check
        self.read = 0

    def __iter__(self) -> Iterator[str]:
        from .errors import CorpusError

        try:
            for arrived in self.lines.batches():
                self.check(arrived)
                for p in arrived:
                    self.read += 1
                    yield p
        except CorpusError as exc:  # (as _read_lines says it)
            raise UsageError(f"--prompt: {exc}") from None

    def __len__(self) -> int:
        return self.read


class _Count:
    """How many of the samples asked for are out, on stderr when it is a terminal and stdout is not
    (`chargen sample -n 2000000 > names.txt` runs for seconds): one line rewritten in place from the
    printing loop, at most four times a second and only after the first second, wiped at the end.
    No thread, as a progress bar would have: a thread keeps sampling from forking its workers."""

    def __init__(self, total: int):
        self.total = total
        self.shown = False
        self.started = time.monotonic()
        self.next = self.started + 1.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + 0.25
        sys.stderr.write(f"\rsample {done:,} of {self.total:,} ({done / self.total:.0%}), {now - self.started:.0f}s")
        sys.stderr.flush()
        self.shown = True

    def __enter__(self) -> "_Count":
        return self

    def __exit__(self, *exc) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")  # (the line wiped: what follows on stderr starts clean)
            sys.stderr.flush()


def _print_samples(out: "_Output", samples, output_format: str, *, jsonl_constrained: bool, lines: bool,
                   streaming: bool, count: Optional[_Count] = None) -> None:
    """One sample a line (jsonl: a record a line); prose samples apart by a blank line."""
    for i, s in enumerate(samples):
        if count is not None:
            count(i)
        if output_format == "jsonl":
            out.write(json.dumps(s.record(jsonl_constrained), ensure_ascii=False) + "\n")
        elif streaming:
            out.write("\n")
        elif lines:
            out.write(s.text + "\n")
        else:
            # Prose samples hold newlines of their own: a blank line keeps them apart.
            out.write(("\n" if i else "") + s.text + "\n")


def _typed_stdin_note(what: str) -> None:
    """Where stdin is a terminal and is read to its end, say so: a user typing there would see
    nothing until Ctrl-D, and take it for hung."""
    if _terminal(sys.stdin):
        console().print(f"note: {what}", highlight=False, markup=False)


def _stdin_bytes(flag: str) -> bytes:
    """All of stdin, for `flag -`."""
    if sys.stdin is None or sys.stdin.closed:
        raise UsageError(f"{flag} - reads stdin, but stdin is closed")
    _typed_stdin_note(f"{flag} - reads the lines you type, one a line, until Ctrl-D")
    raw = getattr(sys.stdin, "buffer", None)
    return raw.read() if raw is not None else sys.stdin.read().encode("utf-8", "surrogateescape")


def _read_prompts() -> list[str]:
    """`--prompt -`: one prompt per line of stdin (an empty line: an empty prompt)."""
    return _read_lines(DASH, "--prompt", keep_empty=True)


def _named_file(flag: str, path: Optional[str], dash: str = "") -> Optional[Path]:
    """A file a flag names, as a Path; an empty name is an error (Path("") would be ".", this
    directory). `dash`: what - stands for there, if anything."""
    if path is not None and not path:
        raise UsageError(f"{flag} is empty: name a file" + (f" (- for {dash})" if dash else ""))
    return None if path is None else Path(path)


def _read_lines(path: Path, flag: str = "--exclude", keep_empty: bool = False) -> list[str]:
    """The lines `flag` names (- is stdin), read as score reads its lines (compressed files as
    their text, CRLF as LF); an empty file has none, and empty lines are dropped unless kept."""
    from .errors import CorpusError
    from .training.ingest import text_lines

    stdin = io.BytesIO(_stdin_bytes(flag)) if path == DASH else None  # (a note where stdin is typed)
    try:
        return [line for line in text_lines([str(path)], stdin, nfc=False) if line or keep_empty]
    except CorpusError as exc:
        raise UsageError(f"{flag}: {exc}") from None


# --- serve ------------------------------------------------------------------------------------


@app.command()
@with_options(ServeConfig, LoadConfig)
def serve(
    checkpoint: Annotated[Optional[list[str]], typer.Option("--checkpoint", "-c", help="A model to serve: a checkpoint file or run directory, named after its run directory, or NAME=PATH, or a bundled model: names, base; repeat for several. [default: names]", show_default=False)] = None,
    access_log: Annotated[bool, typer.Option(help="Log each request on stderr.")] = False,
    **options: Any,
) -> None:
    """Serve models over HTTP: a JSON API under /v1/ and a playground page at /.

    Needs the serve extra: pip install "chargen[serve]". Requests that arrive together are
    sampled together as one batch; Ctrl-C or SIGTERM stops after the requests in flight.

    Examples:

    \b
      chargen serve                # the bundled names model on http://127.0.0.1:8000
      chargen serve -c checkpoints/shakespeare -c names --port 9000
      curl -s localhost:8000/v1/sample -H 'Content-Type: application/json' -d '{"n": 5, "seed": 1}'
    """
    from .serve import serve as run_server, token_from_env

    load_options = loading(options)
    options = given(options)
    config = ServeConfig.from_dict({**options, "token": token_from_env(options.get("token"))})

    def notice(message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    for spec in checkpoint or []:
        _bundled_here(spec)
    run_server(checkpoint or [], config, **load_options, notice=notice, access_log=access_log)


# --- eval -------------------------------------------------------------------------------------


@app.command("eval")
@with_options(LoadConfig)
def eval_command(
    checkpoint: Annotated[str, typer.Argument(help=CHECKPOINT_HELP, show_default=False, callback=_bundled_here)],
    files: Annotated[list[str], typer.Argument(help="UTF-8 text files to score (gzip, bzip2 or xz ones too), or - for stdin.", show_default=False)],
    skip_unknown: Annotated[bool, typer.Option(help="Drop characters the model does not know (and count them) instead of failing.")] = False,
    lines: Annotated[Optional[bool], typer.Option("--lines/--no-lines", help="Score each line on its own, from the start of a line. [default: as the model's corpus: on for names, off for prose]", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per file.")] = False,
    label: Annotated[Optional[str], typer.Option(help=LABEL_HELP, show_default=False, autocompletion=complete_label)] = None,
    **options: Any,
) -> None:
    """Score text with a model: loss in nats and bits per character, and perplexity.

    Example:

    \b
      chargen eval checkpoints/shakespeare corpora/shakespeare.txt
    """
    from .training.data import read_corpus

    model = _load_for_command(checkpoint, options)
    _check_inputs(files)
    _label_note(model, label, scoring=True)
    out = _Output()
    for path in files:
        if path == "-":
            _typed_stdin_note("- reads the text you type, until Ctrl-D")
        text = read_corpus([path]).text
        with _progress_bar("eval", "stdin" if path == "-" else path, 1.0) as progress:
            try:
                r = model.eval(text, skip_unknown=skip_unknown, lines=lines, progress=progress,
                               **({"label": label} if label else {}))
            except VocabularyError as exc:
                raise VocabularyError(f"{'stdin' if path == '-' else path}: {exc} (--skip-unknown drops such "
                                      "characters and counts them)") from None
        r = {"file": "stdin" if path == "-" else path, **r}
        if as_json:
            out.write(json.dumps(r) + "\n")
        else:
            skipped = f"  ({r['skipped']:,} unknown characters skipped)" if r["skipped"] else ""
            out.write(f"{r['file']}: {r['loss']:.4f} nats/char, {r['bpc']:.4f} bits/char, "
                      f"perplexity {r['perplexity']:.3f} over {r['chars']:,} characters{skipped}\n")


def _check_inputs(paths: list[str]) -> None:
    """Each input file opens: one that does not is one Error: line before any note or output."""
    from .training.ingest import open_source

    for path in paths:
        if path != "-":
            open_source(path).close()


@contextlib.contextmanager
def _progress_bar(command: str, name: str, total: Optional[float], shown: bool = True, unit: str = "lines",
                  delay: float = 0.0) -> Iterator[Optional[Callable[[float], None]]]:
    """A bar on stderr while `command` works through its input (`total`: the work, or None: `unit`
    counted as they go), gone when it is done (a labelled model's mixture of 267 labels scores
    32,000 names in minutes); on a terminal only, and if `shown`: a log or a pipe gets the results
    alone. It appears once `delay` seconds have passed, so that quick work does not flicker one."""
    con = console()
    if not (shown and con.is_terminal):
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [BarColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()] if total is not None \
        else [TextColumn(f"{{task.completed:,.0f}} {unit}"), TimeElapsedColumn()]
    bar = Progress(TextColumn(f"[bold]{command}[/] {{task.description}}"), *columns, console=con, transient=True,
                   redirect_stdout=False, redirect_stderr=False)  # stdout is for results only
    task = bar.add_task(name, total=total)
    shown_at = time.monotonic() + delay
    if not delay:
        bar.start()

    def update(done: float) -> None:
        if not bar.live.is_started and time.monotonic() >= shown_at:
            bar.start()
        bar.update(task, completed=done)

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


# --- score ------------------------------------------------------------------------------------


@app.command()
@with_options(LoadConfig)
def score(
    checkpoint: Annotated[str, typer.Argument(help=CHECKPOINT_HELP, show_default=False, callback=_bundled_here)],
    files: Annotated[Optional[list[str]], typer.Argument(help="UTF-8 text files, one candidate a line (gzip, bzip2 or xz ones too), or - for stdin. [default: stdin]", show_default=False)] = None,
    output_format: Annotated[str, typer.Option("--format", help="text: TEXT, log p, log p per character and characters, TAB-separated; jsonl: one JSON object a line.")] = "text",
    skip_unknown: Annotated[bool, typer.Option(help="Score a line with a character the model does not know as impossible (-inf) instead of failing.")] = False,
    label: Annotated[Optional[str], typer.Option(help=LABEL_HELP, show_default=False, autocompletion=complete_label)] = None,
    by_label: Annotated[bool, typer.Option("--by-label", help="A labelled model: also the likeliest label with its probability and the log-probability under each label (text: columns 5 and 6, then LABEL=logp columns).")] = False,
    **options: Any,
) -> None:
    """Score lines: each one's log-probability under the model, one output line per input line.

    Scored from the start of a line, as samples are drawn (temperature 1), the newline that ends it
    included: a name chargen sample drew scores its own logprob. Higher is likelier.

    Example:

    \b
      chargen score names candidates.txt | sort -t$'\\t' -k3 -gr | head
    """
    from .tokenizer import describe_chars
    from .training.ingest import ArrivingLines, text_lines

    if output_format not in ("text", "jsonl"):
        raise UsageError(f"--format must be text or jsonl (got {output_format!r})")
    model = _load_for_command(checkpoint, options)
    _check_inputs(files or [])
    if label or not by_label:  # (--by-label scores under every label: that is what it asks)
        _label_note(model, label, scoring=True)

    # Typed at a terminal: each line scored as it is entered. From a pipe, the lines that have
    # arrived are scored together (2,048 at most) and printed at once: `tail -f log | chargen
    # score` answers as lines come. (Scored in the model's form: not in NFC; no lines in, none
    # out, as any filter in a pipeline.)
    stdin_fd = _fileno(sys.stdin) if (files or ["-"]) == ["-"] else None
    typed = stdin_fd is not None and sys.stdin.isatty()
    if typed:
        console().print("note: type a line and Enter to score it; Ctrl-D ends", highlight=False, markup=False)
    lines = _typed_lines() if typed else ArrivingLines(stdin_fd) if stdin_fd is not None else \
        text_lines(files or ["-"], getattr(sys.stdin, "buffer", None), nfc=False)
    out = _Output()
    with _progress_bar("score", ", ".join(files or ["stdin"]), None,
                       shown=not _terminal(sys.stdout) and not typed) as progress:
        # (typed: a line the model cannot score is said and the next one read, as a shell goes on after a typo)
        scores = model.score(lines, skip_unknown=skip_unknown or typed, label=label,
                             by_label=by_label, batch=1 if typed else 2048)
        failed = False
        for k, s in enumerate(scores, 1):
            if typed and s.unknown and not skip_unknown:
                error_line(f"{s.text!r} holds {describe_chars(s.unknown)}, not in the model's vocabulary "
                           f"(with --skip-unknown such a line scores -inf)")
                failed = True
                continue
            _print_score(out, s, output_format, flush=typed or (isinstance(lines, ArrivingLines) and lines.waiting()))
            if progress is not None and k % 256 == 0:
                progress(k)
    out.flush()
    if failed:
        raise typer.Exit(VocabularyError.exit_code)


def _terminal(stream) -> bool:
    """Whether `stream` is a terminal (a stream the caller closed, None to Python, is none)."""
    return stream is not None and not stream.closed and stream.isatty()


def _fileno(stream) -> Optional[int]:
    """The file descriptor behind `stream`, or None (closed, or none: a test's stand-in)."""
    try:
        return stream.fileno() if stream is not None and not stream.closed else None
    except (AttributeError, OSError, ValueError):
        return None


def _typed_lines() -> Iterator[str]:
    """The lines typed at a terminal, one at a time as Enter is pressed."""
    for number, raw in enumerate(iter(sys.stdin.buffer.readline, b""), 1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise UsageError(f"line {number} typed is not UTF-8; set the terminal to UTF-8 (LANG=C.UTF-8)") from None


def _print_score(out: _Output, s, output_format: str, flush: bool = False) -> None:  # a chargen.evaluation.Score
    if output_format == "jsonl":
        out.write(json.dumps(s.record(), ensure_ascii=False) + "\n", flush=flush)
        return
    extra = ""
    if s.by_label is not None:  # the likeliest first, at the same columns whatever the number of labels
        extra = f"\t{s.likeliest}\t{s.p_likeliest:.4f}" if s.likeliest is not None else "\t\t"
        extra += "".join(f"\t{k}={v:.4f}" for k, v in s.by_label.items())
    out.write(f"{s.text}\t{s.logprob:.4f}\t{s.logprob_per_char:.4f}\t{s.chars}{extra}\n", flush=flush)


# --- export -----------------------------------------------------------------------------------


@app.command()
def export(
    checkpoint: Annotated[str, typer.Argument(help=CHECKPOINT_HELP, show_default=False, callback=_bundled_here)],
    js: Annotated[Optional[str], typer.Option("--js", help="Write the model and its sampler as one dependency-free ES module (browsers, Node 18+); - writes it to stdout.", show_default=False)] = None,
    html: Annotated[Optional[str], typer.Option("--html", help="Write one self-contained web page that draws samples (no server, no network); - writes it to stdout.", show_default=False)] = None,
    weights: Annotated[str, typer.Option("--weights", help="Weights in --js/--html: i8 (a scale per row), f16, f32, or auto: i8 when it is lossless or moves the loss on the model's lines by under 0.005 nats, else f16.")] = "auto",
    to_checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", help="Write the checkpoint with the exported weights (chargen sample on it draws what the page draws).", show_default=False)] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Write the vocabulary as a Hugging Face tokenizer.json; - writes it to stdout.", show_default=False)] = None,
) -> None:
    """Export a model: a JavaScript module, a web page, a checkpoint, a tokenizer.json.

    The module and the page give, for a seed, the samples chargen sample prints; --weights says
    when exactly.

    Examples:

    \b
      chargen export names --html names.html
      chargen export checkpoints/shakespeare --js model.mjs --tokenizer tokenizer.json
    """
    from . import webexport
    from .checkpoint import BEST, checkpoint_path, read_checkpoint

    webexport.check_encoding(weights)  # before anything is written (a tokenizer comes first)
    targets = {flag: _named_file(flag, path, "" if flag == "--checkpoint" else "stdout") for flag, path in
               [("--js", js), ("--html", html), ("--checkpoint", to_checkpoint), ("--tokenizer", tokenizer)]}
    js, html, to_checkpoint, tokenizer = targets.values()
    if not any(targets.values()):
        raise UsageError("name what to write: --js FILE, --html FILE, --checkpoint FILE or --tokenizer FILE")
    to_stdout = [flag for flag, path in targets.items() if path == DASH]
    if "--checkpoint" in to_stdout:
        raise UsageError("--checkpoint writes a binary safetensors file; name a file, not -")
    if len(to_stdout) > 1:
        raise UsageError(f"{' and '.join(to_stdout)} both ask for stdout (-); one of them may have it")
    for flag, path in targets.items():
        if path is None or path == DASH:
            continue
        if path.is_dir():
            raise UsageError(f"{flag} {path} is a directory; name a file in it")
        if not path.parent.exists():
            raise UsageError(f"{flag}: the directory {path.parent} does not exist")
    files = [(flag, path.resolve()) for flag, path in targets.items() if path is not None and path != DASH]
    for i, (flag, path) in enumerate(files):  # (one would silently overwrite the other)
        again = [other for other, p in files[i + 1:] if p == path]
        if again:
            raise UsageError(f"{flag} and {again[0]} both name {targets[flag]}; give each its own file")
    ckpt = read_checkpoint(checkpoint_path(checkpoint), prefer=BEST)
    for flag, path in files:
        problem = _overwrites_checkpoint(flag, path, Path(ckpt.path).resolve())
        if problem:
            raise UsageError(f"{flag} {targets[flag]} {problem}: name another file")
    say = lambda text: console().print(text, highlight=False, markup=False)  # noqa: E731
    if js is not None or html is not None:
        _untrained_note(ckpt)
    if tokenizer is not None:
        _write_exported(tokenizer, ckpt.vocab.to_json(), say, "the tokenizer", f": {len(ckpt.vocab)} characters")
    if js is None and html is None and to_checkpoint is None:
        return
    from .sampling.parallel import blas_for_command

    blas_for_command(ckpt.model_config.matmul_weights)  # (choosing the encoding scores lines)
    encoding = webexport.choose_encoding(ckpt, weights)
    say(encoding.describe())
    if js is not None:
        _write_exported(js, webexport.module_text(ckpt, encoding), say, "the module", f": import {{ sample }} from "
                        f"\"./{js.name if js != DASH else 'model.mjs'}\"; sample({{ n: 10 }})")
    if html is not None:
        _write_exported(html, webexport.page_text(ckpt, encoding), say, "the page", ": open it in a browser, no server needed")
    if to_checkpoint is not None:
        webexport.exported_checkpoint(ckpt, encoding, to_checkpoint)
        say(f"wrote {to_checkpoint} ({encoding.enc} weights as a checkpoint)")


def _overwrites_checkpoint(flag: str, path: Path, exported: Path) -> str:
    """What writing an export to `path` (resolved) would destroy, or "": the checkpoint being exported,
    a run's checkpoint (its best, or its last with the state to resume), or, for text, any
    safetensors file."""
    from .checkpoint import BEST, CONFIG, LAST, holds_safetensors

    if path == exported:
        return ("is the checkpoint being exported; its weights would be replaced by their exported rounding"
                if flag == "--checkpoint" else "is the checkpoint being exported")
    if path.name in (BEST, LAST) and (path.parent / CONFIG).is_file() and path.exists():
        return f"is the checkpoint of the run {path.parent}"
    if flag != "--checkpoint" and holds_safetensors(path):
        return "is a safetensors file (a checkpoint?) that the text would replace"
    return ""


def _write_exported(path: Path, text: str, say: Callable[[str], None], what: str, after: str = "") -> None:
    """An export's text into its file (atomically), or to stdout for `-`; then what was written."""
    from .files import atomic_write

    data = text.encode("utf-8")
    if path == DASH:
        _Output().write(text)
    else:
        atomic_write(path, data)
    say(f"wrote {what + ' to stdout' if path == DASH else path} ({len(data) / 1024:,.0f} KB){after}")


# --- info -------------------------------------------------------------------------------------


@app.command()
def info(
    checkpoint: Annotated[Optional[str], typer.Argument(help=CHECKPOINT_HELP + CHECKPOINT_DEFAULT, show_default=False, callback=_bundled_here)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the facts as one JSON object.")] = False,
    plot: Annotated[bool, typer.Option("--plot", help="Chart the run's train and val loss, and write loss.svg into the run directory.")] = False,
    list_labels: Annotated[bool, typer.Option("--labels", help="List a labelled model's labels, one a line: LABEL<TAB>training lines<TAB>held-out loss (- where none); with --json, one object: {\"labels\": [{\"label\", \"lines\", \"val_loss\"}, ...]}.")] = False,
) -> None:
    """Describe a checkpoint: model, vocabulary, training, losses, versions.

    Example:

    \b
      chargen info checkpoints/shakespeare --plot
    """
    if plot:
        if as_json or list_labels:
            raise UsageError(f"--plot draws a run's curve, and {'--json' if as_json else '--labels'} describes a "
                             f"checkpoint: give one")
        return _plot_run(checkpoint)
    from .checkpoint import BEST, checkpoint_path, default_checkpoint, read_checkpoint

    ckpt = read_checkpoint(checkpoint_path(checkpoint) if checkpoint is not None else default_checkpoint(), prefer=BEST)
    facts = ckpt.describe()
    labels = facts.get("labels")
    if list_labels:
        if not labels:
            raise UsageError(f"{ckpt.path} has no labels (a model trained with --labels has)")
        val, own = labels.get("val_loss", {}), set(labels.get("own") or ())
        rows = sorted(zip(labels["names"], labels["lines"]), key=lambda row: row[0] not in own)  # its own first
        if as_json:
            _Output().write(json.dumps({"labels": [{"label": n, "lines": c, "val_loss": val.get(n)} for n, c in rows]},
                                       ensure_ascii=False) + "\n")
        else:
            _Output().write("".join(f"{n}\t{c}\t{f'{val[n]:.4f}' if n in val else '-'}\n" for n, c in rows))
        return
    if as_json:
        _Output().write(json.dumps(facts, ensure_ascii=False) + "\n")
        return
    from rich.console import Console

    with _piped(sys.stdout):
        Console(highlight=False).print(_info_table(ckpt, facts))


def _plot_run(path: Optional[str]) -> None:
    """info --plot: the run's loss curves on the terminal, and loss.svg in its directory."""
    from .training.plot import loss_series, read_metrics, terminal_chart, write_loss_curve

    run_dir = Path(path) if path is not None else None
    if run_dir is None or not run_dir.is_dir():
        raise UsageError("--plot needs a run directory (the one holding metrics.jsonl)")
    records = read_metrics(run_dir)
    _Output().write(terminal_chart(loss_series(records)) + "\n")
    written = write_loss_curve(run_dir, records, title=f"chargen: {run_dir.name}")
    console().print(f"wrote {written}", highlight=False, markup=False)


def _loss(v: Any) -> str:
    return f"{v:.4f} nats/char ({v / math.log(2):.4f} bpc)" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def _info_table(ckpt, facts: dict):
    """chargen info's table of a checkpoint's facts."""
    from rich.table import Table

    cfg, meta, labels = ckpt.model_config, ckpt.info, facts.get("labels")
    t = Table(show_header=False, title=f"chargen checkpoint {ckpt.path}", title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("model", cfg.describe())
    t.add_row("parameters", f"{facts['parameters']:,}")
    t.add_row("vocabulary", f"{len(ckpt.vocab)} characters: {ckpt.vocab.preview()}")
    sources = meta.get("sources") or []
    t.add_row("corpus", (", ".join(map(str, sources)) if len(sources) > 1 else f"{meta.get('corpus', '?')}")
              + (" (line-oriented)" if ckpt.line_oriented else " (prose)"))
    if ckpt.line_oriented or facts["training_lines"]:  # (a prose model keeps none: --novel is for lines)
        t.add_row("training lines kept", f"{facts['training_lines']:,} (for --novel)")
    if labels:
        t.add_row("labels", _labels_row(labels))
    if meta.get("step") is not None:
        t.add_row("trained", f"{meta['step']:,} steps, {meta.get('chars_seen', 0):,} characters")
    for row, key in (("val loss", "val_loss"), ("best val loss", "best_val_loss")):  # --val-fraction 0: none
        t.add_row(row, "none held out" if meta.get("val_chars") == 0 else _loss(meta.get(key)))
    folds = (meta.get("auto") or {}).get("cross_validation") if isinstance(meta.get("auto"), dict) else None
    if isinstance(folds, dict):
        t.add_row("cross-validated", f"{_loss(folds.get('val_loss'))} held out after {folds.get('steps')} steps, "
                                     f"{_loss(folds.get('start_loss'))} before ({folds.get('folds')} folds, "
                                     f"each line held out once)")
    if isinstance(meta.get("from"), dict):
        t.add_row("started from", _lineage(meta["from"], held_out=meta.get("val_chars") != 0))
    tc = ckpt.train_config
    if tc:
        layout = f"batch {tc.get('batch_size')} x seq {tc.get('seq_len')}"
        if isinstance(meta.get("lines_per_batch"), int):
            layout = f"line mode, {meta['lines_per_batch']:,} lines a batch ({layout})"
        elif cfg.learned_start:
            layout = f"line mode, {layout}"
        t.add_row("training", f"{layout}, lr {tc.get('lr')}, {facts['device'] or '?'} {facts['precision'] or '?'}")
    t.add_row("versions", f"chargen {meta.get('chargen_version', '?')}, torch {meta.get('torch_version', '?')}")
    t.add_row("saved", str(meta.get("saved_at", "?")))
    return t


def _lineage(lineage: dict, held_out: bool) -> str:
    """info's "started from" row: the model a run started from, and what changed at the start
    (with none held out, its loss before training is the cross-validated one's)."""
    from .training.finetune import start_labels_text

    return (f"{lineage.get('path')} (sha256 {str(lineage.get('sha256'))[:16]})"
            + (f", val loss before training {_loss(lineage.get('val_loss'))}" if held_out else "")
            + (f", {counted(lineage['new_chars'], 'new character')}" if lineage.get("new_chars") else "")
            + (f" ({len(lineage['stand_ins'])} started as copies of letters it knew)" if lineage.get("stand_ins") else "")
            + (f", lines from its {start_labels_text(lineage['start_labels'])}" if lineage.get("start_labels") else ""))


# --- entry point ------------------------------------------------------------------------------


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)  # a write that failed for want of room, or the disk


def main() -> None:
    """Console-script entry: run the app, turning ChargenError into `Error: ...` and a closed
    stdout (`| head`) into a quiet exit."""
    code = 0
    _standard_descriptors()
    try:
        rv = app(standalone_mode=False)
        if isinstance(rv, int):  # click hands typer.Exit(code) back as a return value here
            code = rv
    except ChargenError as exc:
        error_line(exc.render(spelling))
        code = exc.exit_code
    except (BrokenPipeError, _PipeClosed):
        code = 0
    except OSError as exc:
        if exc.errno not in _FULL:  # (click's own writes, --help and --version, to a full disk or /dev/full)
            raise
        error_line(f"cannot write {exc.filename or 'the output'} ({exc.strerror})")
        code = 1
    except UnicodeEncodeError as exc:
        if _codec(exc.encoding) != _codec(getattr(sys.stdout, "encoding", None)):
            raise
        char = exc.object[exc.start]
        if "\ud800" <= char <= "\udfff":  # no encoding writes it: a byte of a name that is not UTF-8
            error_line(f"cannot write {char!r}, a byte of a file name that is not UTF-8; rename the file")
        else:
            error_line(f"stdout's encoding ({exc.encoding}) cannot write {char!r} (U+{ord(char):04X}); use a UTF-8 "
                       f"locale (LANG=C.UTF-8) or set PYTHONIOENCODING=utf-8")
        code = 1
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        code = 130
    except typer.Exit as exc:
        code = exc.exit_code
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:
        # Click's usage errors (bad option values, unknown options) and aborts. Typer may vendor its
        # own copy of click, so recognise them by shape rather than by class.
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `chargen`: the help, formatted, as git and llm do
            try:
                _Output().write(exc.ctx.get_help() + "\n")
                code = 0
            except _PipeClosed:
                code = 0
            except ChargenError as failed:  # (stdout on a full disk)
                error_line(failed.render(spelling))
                code = failed.exit_code
        elif hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
            ctx = getattr(exc, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            if ctx is not None and getattr(exc, "option_name", None) in ("-c", "--checkpoint") and \
                    any(p.name == "checkpoint" and type(p).__name__.endswith("Argument") for p in ctx.command.params):
                hint = f" (here the checkpoint is the first argument: {ctx.command_path} CHECKPOINT ...)"
            elif ctx is not None and _checkpoint_given_as_argument(exc, ctx):
                hint = f" (here a checkpoint is an option: {ctx.command_path} -c CHECKPOINT ...)"
            elif ctx is not None and (count := _count_given_as_argument(exc, ctx)):
                hint = f" (how many: {ctx.command_path} -n {count})"
            error_line(" ".join(exc.format_message().split()) + hint)
            code = exc.exit_code
        elif type(exc).__name__ == "Abort":
            sys.stderr.write("Aborted.\n")
            code = 1
        else:
            raise
    _quiet_exit(code)


def _standard_descriptors() -> None:
    """Descriptors 0-2 closed by the caller (`2>&-`, `<&-`, a daemon's) are /dev/null from here, so
    no file chargen opens takes one (a checkpoint being written where a C library's warning or a
    child's stderr goes). A closed stderr takes the notes and errors quietly (it failed the command);
    a closed stdin stays None to Python ("stdin is closed"), a closed stdout is _Unread. stderr is
    then _Notes: a write to it that fails is no failure of the command."""
    for fd in (0, 1, 2):  # in order: each open takes the lowest free descriptor, this one
        try:
            os.fstat(fd)
        except OSError:
            try:
                os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            except OSError:  # (no /dev/null: a bare chroot) as before, then
                return
    if sys.stderr is None:
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    if sys.stdout is None:
        sys.stdout = _Unread(io.FileIO(1, "w", closefd=False), encoding="utf-8")
    if not isinstance(sys.stderr, _Notes):
        sys.stderr = _Notes(sys.stderr)


class _Notes:
    """stderr, whose notes are advisory: a write that fails (its reader gone, `2>&1 | head`; a full
    disk under `2> log`) points descriptor 2 at /dev/null, drops the notes from then on and sets
    `lost`, instead of ending the command: samples still go to stdout, and a training run stops as
    at Ctrl-C, saving where it is (_ProgressCallbacks.should_stop; it was a BrokenPipeError that
    lost the steps since the last evaluation)."""

    def __init__(self, stream) -> None:
        self._stream, self.lost = stream, False

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            self._lose()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._lose()

    def _lose(self) -> None:
        self.lost = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())  # (Python's own flush at exit then succeeds)
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding...: the stream's
        return getattr(self._stream, name)


class _Unread(io.TextIOWrapper):
    """stdout closed by the caller, /dev/null beneath: what a library asks of stdout is answered
    (uvicorn's isatty, in serve), and chargen's own output (_Output) ends quietly: nobody reads it."""


def _codec(encoding: Optional[str]) -> Optional[str]:
    """An encoding's codec by one name ('latin-1' and 'iso8859-1' are one), None if none."""
    import codecs

    try:
        return codecs.lookup(encoding).name if encoding else None
    except LookupError:
        return None


def _checkpoint_given_as_argument(exc: Exception, ctx) -> bool:
    """`chargen sample base` or `chargen serve run/`: a checkpoint where the command takes none
    as an argument (score, eval, export and info do), but -c."""
    from .checkpoint import BUNDLED

    extra = re.match(r"Got unexpected extra argument\S* \(([^\s)]+)", exc.format_message())
    first = extra.group(1) if extra else ""
    return bool(first) and any(p.name == "checkpoint" and type(p).__name__.endswith("Option") for p in ctx.command.params) \
        and (first in BUNDLED or first.endswith(".safetensors") or os.path.isdir(first))  # (never raises)


def _count_given_as_argument(exc: Exception, ctx) -> str:
    """`chargen sample 10`: the number where the command takes -n; "" otherwise."""
    extra = re.match(r"Got unexpected extra argument\S* \((\d+)[\s)]", exc.format_message())
    return extra.group(1) if extra and any("-n" in getattr(p, "opts", ()) for p in ctx.command.params) else ""


def _quiet_exit(code: int) -> None:
    # After a broken pipe, Python's own flush at exit would complain again; point stdout at devnull.
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (BrokenPipeError, OSError, ValueError):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
    sys.exit(code)
