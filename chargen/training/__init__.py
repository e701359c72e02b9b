"""The training side: everything that needs PyTorch, and what prepares its input.

    setup.py        one `chargen train` from options to a run: resume, the base model, sizes
    loop.py         the loop: truncated BPTT over streams (lists: line by line), AdamW, the schedule
    data.py         corpus text -> streams, windows, the train/validation split
    ingest.py       files -> an encoded, cached corpus (large corpora without holding them in memory)
    rundir.py       the run directory: lock, checkpoints, metrics, the RunState that resumes
    callbacks.py    the typed reports a run hands its caller (nothing here prints)
    device.py       device and precision choice, autocast
    distributed.py  torchrun (DDP) process groups
    sizing.py       automatic model and batch sizes from the corpus and the measured speed
    probe.py        timing real training steps of candidate shapes
    finetune.py     starting from a trained model: vocabulary growth, lineage
    scorer.py       the torch scorer behind chargen.evaluation's losses
    plot.py         loss curves (terminal and SVG), no torch

Importing this package imports no torch; `chargen.training.train` (the loop) does, when used.
"""

__all__ = ["train", "TrainResult", "learning_rate"]


def __getattr__(name: str):
    # The loop imports torch; the package itself stays importable without it (plot, data, ingest).
    if name in __all__:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'chargen.training' has no attribute {name!r}")
