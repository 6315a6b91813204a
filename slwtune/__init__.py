"""slwtune: tune Sequence Length Warmup for GPT pre-training.

`import slwtune` stays light: the public names below load their module on first use, so
`from slwtune import SeqLengthWarmup` in your own loop pulls in torch and nothing else
(no Ray, MLflow, optuna or the service). `slwtune.tune_function(train_fn, spec)` tunes SLW for
your own training function (`slwtune.user_loop` runs it; `slwtune.driver` tunes it); it brings in Ray when it runs.
"""

from importlib import import_module

# public name -> the module that defines it
_LAZY = {
    "SeqLengthWarmup": "slwtune.slw",
    "LRSchedule": "slwtune.slw",
    "TokenClock": "slwtune.slw",
    "tune_function": "slwtune.driver",
    "TrainContext": "slwtune.user_loop",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'slwtune' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
