"""The library's exceptions: one base class, one subclass per concern.

Only the service turns these into HTTP errors; the CLI prints them.
"""


class SlwtuneError(Exception):
    """Base class of every error slwtune raises on purpose."""


class SpecError(SlwtuneError):
    """A job spec (or an override of one) is invalid.

    `problems` lists every problem found, each a dict with `loc` (the dotted
    field name), `msg` and `value`, so callers can show all of them at once.
    """

    def __init__(self, problems: list[dict]):
        self.problems = problems
        lines = [f"{p['loc']}={p['value']!r}: {p['msg']}" for p in problems]
        super().__init__("invalid job spec:\n  " + "\n  ".join(lines))


class DataError(SlwtuneError):
    """A dataset is missing, malformed, or cannot be prepared."""


class ModelError(SlwtuneError):
    """A model configuration or input is invalid."""


class TuningError(SlwtuneError):
    """The tuning job cannot go on (for example: no stable probe)."""
