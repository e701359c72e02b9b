"""The sampling side: drawing samples from a trained network, never importing torch.

    randomness.py   counter-based random numbers: attempt i's character t is a hash of (key, i, t)
    engine.py       the row engine: rows of many requests advance together, a network step a character
    drawing.py      which attempts to run and which results to keep (prompts, unique, novel, budgets)
    constraints.py  regular expressions and length/ending/contains rules compiled to one automaton
    search.py       the most likely samples, by exact best-first search
    batching.py     a worker thread that gathers concurrent requests into one engine (chargen serve)
    parallel.py     worker processes, one per core, each with its own engine (many samples, Linux)

The network itself is a `Stepper`: the numpy twin (chargen.npmodel) or a torch CharRNN through
chargen.model.TorchStepper.
"""

from .constraints import Guide, guide_for
from .drawing import Drawing, Sample, SampleStats, check_prompt, generate, prime, run
from .engine import Attempts, Results, RowEngine, Stepper, inverse_cdf, log_softmax, run_jobs, sampling_probs
from .randomness import derive_key, random_seed, uniforms
from .tree import MAX_BATCH

__all__ = ["MAX_BATCH", "Drawing", "Guide", "Sample", "SampleStats", "check_prompt", "generate", "guide_for", "prime",
           "run", "Attempts", "Results", "RowEngine", "Stepper", "inverse_cdf", "log_softmax", "run_jobs",
           "sampling_probs",
           "derive_key", "random_seed", "uniforms"]
