"""User-facing errors: each names the file, key, row or tensor at fault.

The CLI turns a `PipelineError` into one line on stderr and a non-zero exit; any other exception is a bug
and keeps its traceback.
"""


class PipelineError(Exception):
    """A problem with the user's input that the user can fix."""


class ParamsError(PipelineError):
    """params.yaml (or an override) names an unknown profile, an unknown key, or a value of the wrong type."""


class InputError(PipelineError):
    """An input file or directory is missing or is not what the stage needs."""
