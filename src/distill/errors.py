"""The one exception type for problems a user can fix.

Stages raise `DistillError` with a single line that names the input and what to do about it; the
CLI prints that line (no traceback) and exits non-zero. Anything else is a bug and keeps its traceback.
"""


class DistillError(Exception):
    """A problem with the user's input, files or settings, explained in one line."""


class DistillWarning(UserWarning):
    """Something the user should change but that still works, such as a setting's old name; the CLI
    prints it as one line."""


class UpstreamError(DistillError):
    """A server distill depends on (an OpenAI-compatible endpoint, a team's RAG service) could not
    answer after its retries: a service built on distill reports it as 502, not as the caller's fault."""
