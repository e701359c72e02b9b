"""The command line: parse, call the library, print, and map ChargenError to `Error: ...` + exit code.

stdout carries generated text only; everything else (progress, tables, notices, errors) goes to
one rich console on stderr. torch and numpy are imported inside the commands that need them, so
`chargen --help` stays instant.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ._version import __version__
from .config import (DEFAULT_LINE_LENGTH, DEFAULT_PROSE_LENGTH, DEFAULT_TIME, SampleConfig, ServeConfig, TrainConfig,
                     format_duration)
from .errors import ChargenError, UsageError

app = typer.Typer(
    name="chargen",
    help="Train a character-level LSTM on your own text, and sample from it.\n\n"
    "Example: chargen sample -n 10 | sort -u",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_console = None


def console():
    """The one stderr console (created lazily: rich costs import time)."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True, highlight=False)
    return _console


def error_line(message: str) -> None:
    # Plain write, not rich markup: a message may hold brackets. It stays one line whatever it quotes.
    one_line = message.replace("\r", "\\r").replace("\n", "\\n")
    sys.stderr.write(f"Error: {one_line}\n")
    sys.stderr.flush()


def _version_callback(value: bool) -> None:
    if value:
        sys.stdout.write(f"chargen {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train a character-level LSTM on your own text, and sample from it.

    Example: chargen train corpora/names.txt --time 5m && chargen sample -c checkpoints/names -n 10
    """


def _default(cls, name: str) -> str:
    value = cls.__dataclass_fields__[name].default
    return "" if value is None else f" [default: {value}]"


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
            disable=quiet,
        )
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def on_notice(self, message: str) -> None:
        if not self.quiet:
            self.progress.console.print(f"[yellow]note:[/] {message}", markup=True, highlight=False)

    def on_start(self, r) -> None:  # a chargen.callbacks.StartReport
        if self.quiet:
            return
        m = r.model
        resumed = f", resumed at step {r.resumed_from_step}" if r.resumed_from_step is not None else ""
        self.con.print(
            f"{r.corpus}: {r.train_chars:,} train / {r.val_chars:,} val chars, vocab {m.vocab_size}, "
            f"unigram entropy {r.unigram_entropy:.3f} nats" + (", line-oriented" if r.line_oriented else ""),
            highlight=False, markup=False,
        )
        stop = []
        if r.max_steps:
            stop.append(f"{r.max_steps:,} steps")
        if r.time_budget:
            from .config import format_duration

            stop.append(format_duration(r.time_budget))
        if r.patience:
            stop.append(f"{r.patience} evaluations without a better val loss")
        self.con.print(
            f"model: {m.layers}x{m.hidden} {m.cell}, embed {m.embed}, dropout {m.dropout}, "
            f"{r.parameters:,} parameters; batch {r.batch_size} x seq {r.seq_len}; "
            f"{r.device} {r.precision}; stop at {' or '.join(stop)}{resumed} -> {r.out_dir}",
            highlight=False, markup=False,
        )
        self.task = self.progress.add_task("train", total=1000, status="starting")

    def on_step(self, r) -> None:  # a chargen.callbacks.StepReport
        if self.task is None:
            return
        val = f" val {r.val_loss:.3f}" if math.isfinite(r.val_loss) else ""
        status = f"step {r.step:,} loss {r.loss:.3f}{val} | {r.chars_per_sec:,.0f} chars/s"
        self.progress.update(self.task, completed=min(1000, int(r.progress * 1000)), status=status)

    def on_eval(self, r) -> None:  # a chargen.callbacks.EvalReport
        if self.quiet:
            return
        mark = " *" if r.improved else ""
        self.progress.console.print(
            f"step {r.step:>7,}  train {f'{r.train_loss:.4f}' if math.isfinite(r.train_loss) else '-':>6}  "
            f"val {r.val_loss:.4f} nats ({r.val_bpc:.3f} bpc){mark}",
            highlight=False, markup=False,
        )
        if r.sample:
            from rich.text import Text

            self.progress.console.print(Text(r.sample, style="dim"), highlight=False)

    def should_stop(self, step: int) -> bool:
        return False  # Ctrl-C and SIGTERM are caught by the loop itself

    def on_end(self, r) -> None:  # a chargen.callbacks.EndReport
        if self.task is not None and not r.interrupted:
            self.progress.update(self.task, completed=1000)
        self.summary = r


def _print_curve(run_dir: Path) -> None:
    from .training.plot import loss_series, read_metrics, terminal_chart

    try:
        records = read_metrics(run_dir)
    except ChargenError:
        return
    if len(records) >= 2:
        sys.stderr.write(terminal_chart(loss_series(records)) + f"\n        curve: {Path(run_dir) / 'loss.svg'}\n")


def _summary_table(r):  # a chargen.callbacks.EndReport
    from rich.table import Table

    from .config import format_duration

    t = Table(title="chargen train", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("run directory", r.run_dir)
    t.add_row("steps", f"{r.steps:,} ({r.chars_seen:,} characters, {r.epochs} full epochs)")
    if math.isfinite(r.best_val_loss):
        t.add_row("best val loss", f"{r.best_val_loss:.4f} nats/char, {r.best_val_loss / math.log(2):.4f} bits/char")
    t.add_row("unigram entropy", f"{r.unigram_entropy:.4f} nats/char (a model that ignores context)")
    t.add_row("speed", f"{r.chars_per_sec:,.0f} chars/s ({r.device} {r.precision}, "
                       f"{r.chars_per_sec * r.flops_per_char / 1e9:,.1f} GFLOP/s)")
    t.add_row("time", format_duration(r.elapsed))
    if r.stopped:
        t.add_row("stopped", r.stopped)
    return t


@app.command()
def train(
    corpus: Annotated[Optional[list[str]], typer.Argument(help="UTF-8 text files, or - for stdin.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory. [default: checkpoints/<corpus name>]")] = None,
    val_file: Annotated[Optional[str], typer.Option("--val-file", help="Validate on this file instead of the corpus's tail.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Fraction of the text, from its end, held out for validation." + _default(TrainConfig, "val_fraction"))] = None,
    cell: Annotated[Optional[str], typer.Option(help="Recurrent cell: lstm, gru or rnn. [default: lstm]")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Stacked recurrent layers. [default: auto, from the corpus, the budget and the measured speed; printed at start]")] = None,
    hidden: Annotated[Optional[int], typer.Option(help="Hidden units per layer. [default: auto, from the corpus, the budget and the measured speed; printed at start]")] = None,
    embed: Annotated[Optional[int], typer.Option(help="Character embedding size. [default: auto, from the corpus, the budget and the measured speed; printed at start]")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout between layers and before the head. [default: auto, from the corpus, the budget and the measured speed; printed at start]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Parallel streams the text is laid out in. [default: auto, from the corpus, the budget and the measured speed; printed at start]")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Characters per window (BPTT length). [default: auto, from the corpus, the budget and the measured speed; printed at start]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW)." + _default(TrainConfig, "lr") + " (or chosen with the sizes, printed at start)")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay on weight matrices." + _default(TrainConfig, "weight_decay"))] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Linear warmup steps before cosine decay." + _default(TrainConfig, "warmup"))] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Clip the global gradient norm (0: off)." + _default(TrainConfig, "grad_clip"))] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps.")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Stop after this many passes over the text.")] = None,
    time: Annotated[Optional[str], typer.Option("--time", help="Stop after this wall-clock time: 90s, 5m, 2h." + f" [default: {format_duration(DEFAULT_TIME)} if no other stop is given]")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Evaluate and save every N steps." + _default(TrainConfig, "eval_every"))] = None,
    patience: Annotated[Optional[int], typer.Option(help="Stop early after this many evaluations without a better val loss; 0: never. [default: 5 unless --max-steps or --epochs is given]")] = None,
    sample_every: Annotated[Optional[int], typer.Option(help="Show a sample every N evaluations, on stderr (0: never)." + _default(TrainConfig, "sample_every"))] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed." + _default(TrainConfig, "seed"))] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps." + _default(TrainConfig, "device"))] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, fp32, bf16 or fp16 (auto: bf16 where the hardware has bf16 matrix units). [default: auto]")] = None,
    config_file: Annotated[Optional[str], typer.Option("--config", help="Read options from a TOML file (keys named like the flags); flags given here win.")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue the run in this directory (or from this last.safetensors).")] = None,
    start_from: Annotated[Optional[str], typer.Option("--from", help="Start from this trained model and adapt it to the corpus: a checkpoint file, a run directory, or a bundled model: 'base' (names of many languages and kinds) or 'names' (US first names). Its shape is kept, its vocabulary grows by the corpus's new characters; none: from scratch. [default: base for a list of at most 5,000 lines given no model shape, else none]", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a run already in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output; errors only.")] = False,
) -> None:
    """Train a character-level LSTM on text files.

    Writes best.safetensors (best validation loss), last.safetensors (for --resume) and
    metrics.jsonl into the run directory. Ctrl-C saves and tells how to resume.

    Example: chargen train corpora/shakespeare.txt --time 5m
    """
    from .config import parse_duration, train_options
    from .extras import require_torch

    require_torch("chargen train")
    options = train_options(dict(
        corpus=corpus, out=out, val_file=val_file, precision=precision, resume=resume, overwrite=overwrite,
        quiet=quiet, start_from=start_from, cell=cell, layers=layers, hidden=hidden, embed=embed, dropout=dropout, batch_size=batch_size,
        seq_len=seq_len, lr=lr, weight_decay=weight_decay, warmup=warmup, grad_clip=grad_clip, max_steps=max_steps,
        epochs=epochs, time=parse_duration(time) if time is not None else None, eval_every=eval_every,
        patience=patience, sample_every=sample_every, val_fraction=val_fraction, seed=seed, device=device,
    ), config_file)
    quiet = bool(options.pop("quiet", False))
    corpus = options.pop("corpus", [])

    from .api import train as api_train
    from .errors import TrainingInterrupted

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
        if rank == 0:
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
    """stdout, flushed per line; a closed pipe (e.g. `| head`) ends the command quietly."""

    def __init__(self) -> None:
        self.stream = sys.stdout

    def write(self, text: str, flush: bool = True) -> None:
        # Click would turn EPIPE into exit code 1; raise our own (non-OSError) signal instead.
        if self.stream is None:  # started with stdout closed (`>&-`): nobody is reading
            raise _PipeClosed()
        try:
            self.stream.write(text)
            if flush:
                self.stream.flush()
        except BrokenPipeError:
            raise _PipeClosed() from None
        except (OSError, ValueError) as exc:
            if isinstance(exc, ValueError) or self.stream.closed:
                raise _PipeClosed() from None
            raise


@app.command()
def sample(
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", "-c", help="Checkpoint file or run directory (its best), or a bundled model: names, base. [default: $CHARGEN_CHECKPOINT, else the bundled names model]")] = None,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text each sample starts with; - reads one prompt per line from stdin.")] = "",
    num: Annotated[int, typer.Option("--num", "-n", help="Samples to print (per prompt).")] = 1,
    length: Annotated[Optional[int], typer.Option("--length", "-l", help=f"Maximum characters generated per sample. [default: {DEFAULT_LINE_LENGTH} per line, {DEFAULT_PROSE_LENGTH} for prose]")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", "-t", help=f"Randomness: 0 is greedy, 1 the model's own distribution. [default: {SampleConfig.temperature}]", show_default=False)] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Draw only from the k likeliest characters.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Draw only from the likeliest characters whose mass reaches p (nucleus).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: same seed, same output.")] = None,
    lines: Annotated[Optional[bool], typer.Option("--lines/--no-lines", help="One line per sample, ending at the newline. [default: as the model's corpus: on for names, off for prose]", show_default=False)] = None,
    unique: Annotated[bool, typer.Option(help="Never print the same sample twice.")] = False,
    novel: Annotated[bool, typer.Option(help="Never print a line of the training corpus (of a model adapted with train --from: your list, not the base model's corpus; add that with --exclude).")] = False,
    exclude: Annotated[Optional[Path], typer.Option(help="Never print a line of this UTF-8 file (like --novel, for any list).", rich_help_panel="Constraints (line samples)")] = None,
    min_len: Annotated[Optional[int], typer.Option(help="At least this many characters per sample, the prompt included, the newline not.", rich_help_panel="Constraints (line samples)")] = None,
    max_len: Annotated[Optional[int], typer.Option(help="At most this many characters per sample, the prompt included, the newline not.", rich_help_panel="Constraints (line samples)")] = None,
    ends_with: Annotated[Optional[str], typer.Option(help="Every sample ends with this text.", rich_help_panel="Constraints (line samples)")] = None,
    contains: Annotated[Optional[list[str]], typer.Option(help="Every sample contains this text (repeat for several).", rich_help_panel="Constraints (line samples)", show_default=False)] = None,
    regex: Annotated[Optional[str], typer.Option(help="The whole sample (prompt included) must match this Python regular expression; supported: literals, escapes, ., [classes], \\w \\d \\s, groups, |, * + ? {m,n}, (?i); not lookaround, backreferences or \\b.", rich_help_panel="Constraints (line samples)")] = None,
    guided: Annotated[bool, typer.Option(help="Draw only among characters that can still satisfy the constraints: never wastes a draw, but favours early choices with many ways to finish. Default: exact, the model's distribution conditioned on the constraints.", rich_help_panel="Constraints (line samples)")] = False,
    top: Annotated[Optional[int], typer.Option(help="Print the N most probable line samples instead of drawing (exact best-first search at temperature 1; constraints, prompt, --novel and --exclude apply), best first.", rich_help_panel="Constraints (line samples)", show_default=False)] = None,
    output_format: Annotated[str, typer.Option("--format", help="text, or jsonl (text, prompt, logprob, logprob_per_char, chars; with constraints also kept and logprob_guided).")] = "text",
    backend: Annotated[str, typer.Option(help="auto, numpy (fast start, CPU) or torch.")] = "auto",
    device: Annotated[Optional[str], typer.Option(help="Device for the torch backend: cpu, cuda, mps.")] = None,
) -> None:
    """Generate text from a trained model, one sample per line.

    Examples:

      chargen sample -n 10                      # ten names from the bundled model

      chargen sample -n 1000 --unique | sort | head

      chargen sample -n 5 --max-len 8 --ends-with a --seed 1

      chargen sample --top 20 --ends-with a --format jsonl

      chargen sample -c checkpoints/shakespeare -p "ROMEO:" -l 500
    """
    if output_format not in ("text", "jsonl"):
        raise UsageError(f"--format must be text or jsonl (got {output_format!r})")

    from .api import load
    from .checkpoint import default_checkpoint
    from .sampling.drawing import SampleStats

    model = load(checkpoint if checkpoint is not None else default_checkpoint(), backend=backend, device=device)
    line_mode = model.line_oriented if lines is None else lines
    prompts = _read_prompts() if prompt == "-" else [prompt]
    constraints = dict(min_len=min_len, max_len=max_len, ends_with=ends_with, contains=contains or [], regex=regex,
                       exclude=_read_lines(exclude) if exclude is not None else None, novel=novel)
    constrained = any(v for k, v in constraints.items() if k not in ("exclude", "novel"))
    out = _Output()
    stats = SampleStats()
    streaming = output_format == "text" and not line_mode and num == 1 and len(prompts) == 1 and top is None
    if top is not None:
        given = [flag for flag, v in (("--temperature", temperature), ("--top-k", top_k), ("--top-p", top_p),
                                      ("--seed", seed), ("--unique", unique), ("--guided", guided))
                 if v is not None and v is not False]
        if given:
            raise UsageError(f"--top ranks by the model's own probabilities and never repeats; drop {', '.join(given)}")
        if lines is False or not line_mode:
            raise UsageError("--top lists line samples; this model writes prose (pass --lines)")
        samples = model.top(top, prompts, length=length, **constraints)
        constrained = True
    else:
        samples = model.samples(
            num, prompts, temperature=SampleConfig.temperature if temperature is None else temperature,
            top_k=top_k, top_p=top_p, length=length, seed=seed, lines=line_mode, unique=unique, guided=guided,
            stats=stats, on_char=(lambda ch: out.write(ch, flush=ch == "\n")) if streaming else None, **constraints)
        if streaming:
            out.write(prompts[0], flush=True)
    for i, s in enumerate(samples):
        if output_format == "jsonl":
            out.write(json.dumps(s.record(constrained and top is None), ensure_ascii=False) + "\n")
        elif streaming:
            out.write("\n")
        elif line_mode or top is not None:
            out.write(s.text + "\n")
        else:
            # Prose samples hold newlines of their own: a blank line keeps them apart.
            out.write(("\n" if i else "") + s.text + "\n")
    if constrained and top is None and not guided and stats.rejected_by_constraints:
        console().print(f"note: {stats.satisfied:,} of {stats.draws:,} draws ({stats.satisfied_share:.1%}) met the "
                        f"constraints; exact sampling drops the rest (--guided drops none, but is biased)",
                        highlight=False, markup=False, soft_wrap=True)


def _read_prompts() -> list[str]:
    """`--prompt -`: one prompt per line of stdin, decoded strictly as UTF-8."""
    if sys.stdin is None or sys.stdin.closed:
        raise UsageError("--prompt - reads prompts from stdin, but stdin is closed")
    raw = getattr(sys.stdin, "buffer", None)
    data = raw.read() if raw is not None else sys.stdin.read().encode("utf-8", "surrogateescape")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"the prompts on stdin are not UTF-8 (byte {exc.start}); convert them, "
                         f"e.g. iconv -f latin1 -t utf-8") from None
    prompts = [line.rstrip("\r") for line in text.split("\n")]
    if prompts and prompts[-1] == "":
        prompts.pop()  # the newline that ends the last line starts no prompt
    return prompts


def _read_lines(path: Path) -> list[str]:
    """--exclude: the file's lines (UTF-8, \\n or \\r\\n); an empty file excludes nothing."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"--exclude {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"--exclude {path} is a directory; name a file with one line per entry") from None
    except OSError as exc:
        raise UsageError(f"--exclude {path} cannot be read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"--exclude {path} is not UTF-8 (byte {exc.start}); convert it, "
                         f"e.g. iconv -f latin1 -t utf-8") from None
    return [line.rstrip("\r") for line in text.split("\n") if line.rstrip("\r")]


# --- serve ------------------------------------------------------------------------------------


@app.command()
def serve(
    checkpoint: Annotated[Optional[list[str]], typer.Option("--checkpoint", "-c", help="A model to serve: a checkpoint file or run directory, named after its run directory, or NAME=PATH; repeat for several; names is the bundled model. [default: names]", show_default=False)] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but localhost exposes the API, so set --token.")] = ServeConfig.host,
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free one, printed at start).")] = ServeConfig.port,
    token: Annotated[Optional[str], typer.Option(help="Require this bearer token on the API (Authorization: Bearer TOKEN). [default: $CHARGEN_SERVE_TOKEN, else none]", show_default=False)] = None,
    max_n: Annotated[int, typer.Option(help="Most samples one request may ask for, all its prompts together.")] = ServeConfig.max_n,
    max_length: Annotated[int, typer.Option(help="Most characters a sample may run to.")] = ServeConfig.max_length,
    max_prompts: Annotated[int, typer.Option(help="Most prompts in one request.")] = ServeConfig.max_prompts,
    max_body: Annotated[int, typer.Option(help="Most bytes in a request body.")] = ServeConfig.max_body,
    max_streams: Annotated[int, typer.Option(help="Most /v1/stream responses open at once.")] = ServeConfig.max_streams,
    window: Annotated[float, typer.Option(help="Seconds an idle model waits to gather requests into one batch.")] = ServeConfig.window,
    max_draws: Annotated[int, typer.Option(help="Most draws one sample request may cost (rare constraints draw many); past it, a 422.")] = ServeConfig.max_draws,
    backend: Annotated[str, typer.Option(help="auto, numpy (fast start, CPU) or torch.")] = "auto",
    device: Annotated[Optional[str], typer.Option(help="Device for the torch backend: cpu, cuda, mps.")] = None,
    access_log: Annotated[bool, typer.Option(help="Log each request on stderr.")] = False,
) -> None:
    """Serve models over HTTP: a JSON API under /v1/ and a playground page at /.

    Needs the serve extra: pip install "chargen[serve]". Requests that arrive together are
    sampled together as one batch; Ctrl-C or SIGTERM stops after the requests in flight.

    Examples:

      chargen serve                                  # the bundled names model on http://127.0.0.1:8000

      chargen serve -c checkpoints/shakespeare -c names --port 9000

      curl -s localhost:8000/v1/sample -H 'Content-Type: application/json' -d '{"n": 5, "seed": 1}'
    """
    from .serve import serve as run_server, token_from_env

    config = ServeConfig(host=host, port=port, token=token_from_env(token), max_n=max_n, max_length=max_length,
                         max_prompts=max_prompts, max_body=max_body, max_streams=max_streams, window=window,
                         max_draws=max_draws)

    def notice(message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    run_server(checkpoint or [], config, backend=backend, device=device, notice=notice, access_log=access_log)


# --- eval -------------------------------------------------------------------------------------


@app.command("eval")
def eval_command(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file or run directory (its best).", show_default=False)],
    files: Annotated[list[str], typer.Argument(help="UTF-8 text files to score, or - for stdin.", show_default=False)],
    skip_unknown: Annotated[bool, typer.Option(help="Drop characters the model does not know (and count them) instead of failing.")] = False,
    lines: Annotated[Optional[bool], typer.Option("--lines/--no-lines", help="Score each line on its own, from the start of a line. [default: as the model's corpus: on for names, off for prose]", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per file.")] = False,
    backend: Annotated[str, typer.Option(help="auto, numpy (fast start, CPU) or torch.")] = "auto",
    device: Annotated[Optional[str], typer.Option(help="Device for the torch backend: cpu, cuda, mps.")] = None,
) -> None:
    """Score text with a model: loss in nats and bits per character, and perplexity.

    Example: chargen eval checkpoints/shakespeare corpora/shakespeare.txt
    """
    from .api import load
    from .training.data import read_corpus

    model = load(checkpoint, backend=backend, device=device)
    for path in files:
        text = read_corpus([path]).text
        r = model.eval(text, skip_unknown=skip_unknown, lines=lines)
        r = {"file": "stdin" if path == "-" else path, **r}
        if as_json:
            sys.stdout.write(json.dumps(r) + "\n")
        else:
            skipped = f"  ({r['skipped']:,} unknown characters skipped)" if r["skipped"] else ""
            sys.stdout.write(f"{r['file']}: {r['loss']:.4f} nats/char, {r['bpc']:.4f} bits/char, "
                             f"perplexity {r['perplexity']:.3f} over {r['chars']:,} characters{skipped}\n")
        sys.stdout.flush()


# --- export -----------------------------------------------------------------------------------


@app.command()
def export(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file or run directory (its best).", show_default=False)],
    tokenizer: Annotated[Path, typer.Option("--tokenizer", help="Write the vocabulary here as a Hugging Face tokenizer.json.")],
) -> None:
    """Export a checkpoint's vocabulary as a Hugging Face tokenizer.json.

    `tokenizers.Tokenizer.from_file` loads it, and it encodes text to the ids chargen uses.

    Example: chargen export checkpoints/shakespeare --tokenizer tokenizer.json
    """
    from .checkpoint import BEST, checkpoint_path, read_checkpoint
    from .files import atomic_write

    ckpt = read_checkpoint(checkpoint_path(checkpoint), prefer=BEST)
    if tokenizer.is_dir():
        raise UsageError(f"--tokenizer {tokenizer} is a directory; name a file such as {tokenizer / 'tokenizer.json'}")
    if not tokenizer.parent.exists():
        raise UsageError(f"--tokenizer: the directory {tokenizer.parent} does not exist")
    atomic_write(tokenizer, ckpt.vocab.to_json().encode("utf-8"))
    console().print(f"wrote {tokenizer} ({len(ckpt.vocab)} characters)", highlight=False, markup=False)


# --- info -------------------------------------------------------------------------------------


@app.command()
def info(
    path: Annotated[Optional[str], typer.Argument(help="Checkpoint file or run directory. [default: the bundled names model]", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the facts as one JSON object.")] = False,
    plot: Annotated[bool, typer.Option("--plot", help="Chart the run's train and val loss, and write loss.svg into the run directory.")] = False,
) -> None:
    """Describe a checkpoint: model, vocabulary, training, losses, versions.

    Example: chargen info checkpoints/shakespeare --plot
    """
    if plot:
        from .training.plot import loss_series, read_metrics, terminal_chart, write_loss_curve

        run_dir = Path(path) if path is not None else None
        if run_dir is None or not run_dir.is_dir():
            raise UsageError("--plot needs a run directory (the one holding metrics.jsonl)")
        records = read_metrics(run_dir)
        sys.stdout.write(terminal_chart(loss_series(records)) + "\n")
        written = write_loss_curve(run_dir, records, title=f"chargen: {run_dir.name}")
        console().print(f"wrote {written}", highlight=False, markup=False)
        return
    from .checkpoint import BEST, checkpoint_path, default_checkpoint, read_checkpoint

    ckpt = read_checkpoint(checkpoint_path(path) if path is not None else default_checkpoint(), prefer=BEST)
    cfg, meta, facts = ckpt.model_config, ckpt.info, ckpt.describe()
    if as_json:
        sys.stdout.write(json.dumps(facts, ensure_ascii=False) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    def loss(v: Any) -> str:
        return f"{v:.4f} nats/char ({v / math.log(2):.4f} bpc)" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"

    t = Table(show_header=False, title=f"chargen checkpoint {ckpt.path}", title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("model", f"{cfg.layers} x {cfg.hidden} {cfg.cell}, embed {cfg.embed}, dropout {cfg.dropout}")
    t.add_row("parameters", f"{facts['parameters']:,}")
    t.add_row("vocabulary", f"{len(ckpt.vocab)} characters: {ckpt.vocab.preview()}")
    t.add_row("corpus", f"{meta.get('corpus', '?')}" + (" (line-oriented)" if ckpt.line_oriented else " (prose)"))
    t.add_row("training lines kept", f"{facts['training_lines']:,} (for --novel)")
    if meta.get("step") is not None:
        t.add_row("trained", f"{meta['step']:,} steps, {meta.get('chars_seen', 0):,} characters")
    t.add_row("val loss", loss(meta.get("val_loss")))
    t.add_row("best val loss", loss(meta.get("best_val_loss")))
    lineage = meta.get("from")
    if isinstance(lineage, dict):
        t.add_row("started from", f"{lineage.get('path')} (sha256 {str(lineage.get('sha256'))[:16]}), "
                                  f"val loss before training {loss(lineage.get('val_loss'))}"
                                  + (f", {lineage.get('new_chars')} new characters" if lineage.get("new_chars") else ""))
    tc = ckpt.train_config
    if tc:
        t.add_row("training", f"batch {tc.get('batch_size')} x seq {tc.get('seq_len')}, lr {tc.get('lr')}, "
                              f"{facts['device'] or '?'} {facts['precision'] or '?'}")
    t.add_row("versions", f"chargen {meta.get('chargen_version', '?')}, torch {meta.get('torch_version', '?')}")
    t.add_row("saved", str(meta.get("saved_at", "?")))
    Console(highlight=False).print(t)


# --- entry point ------------------------------------------------------------------------------


def main() -> None:
    """Console-script entry: run the app, turning ChargenError into `Error: ...` and a closed
    stdout (`| head`) into a quiet exit."""
    code = 0
    try:
        rv = app(standalone_mode=False)
        if isinstance(rv, int):  # click hands typer.Exit(code) back as a return value here
            code = rv
    except ChargenError as exc:
        error_line(str(exc))
        code = exc.exit_code
    except (BrokenPipeError, _PipeClosed):
        code = 0
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
        if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
            ctx = getattr(exc, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            error_line(" ".join(exc.format_message().split()) + hint)
            code = exc.exit_code
        elif type(exc).__name__ == "Abort":
            sys.stderr.write("Aborted.\n")
            code = 1
        else:
            raise
    _quiet_exit(code)


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
