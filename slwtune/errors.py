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

    def __init__(self, problems: list[dict], title: str = "invalid job spec"):
        self.problems = problems
        super().__init__(f"{title}:\n  " + "\n  ".join(problem_line(p) for p in problems))


def problem_line(problem: dict) -> str:
    """`field=value: what is wrong`, on one line; a section's value (a mapping) is not dumped, a long one is cut."""
    if isinstance(problem["value"], dict):
        return f"{problem['loc']}: {problem['msg']}".replace("\n", " ")
    value = repr(problem["value"])
    if len(value) > 80:
        value = value[:77] + "..."
    return f"{problem['loc']}={value}: {problem['msg']}".replace("\n", " ")


class DataError(SlwtuneError):
    """A dataset is missing, malformed, or cannot be prepared."""


class ModelError(SlwtuneError):
    """A model configuration or input is invalid."""


class TuningError(SlwtuneError):
    """The tuning job cannot go on (for example: no stable probe)."""
