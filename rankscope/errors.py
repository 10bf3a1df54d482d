"""Errors that are the user's to fix."""


class UserError(Exception):
    """A problem with the user's input: message says what and how to fix; the CLI prints it without a traceback."""


class WorkFailed(Exception):
    """The work ran and failed for a reason outside the user's input (e.g. a full disk): the CLI prints the
    message (one paragraph: what failed, what is intact, how to continue) without a traceback and exits 1."""


class AnalysisFailed(Exception):
    """Some diagnostics could not be computed (e.g. an unreadable checkpoint): the CLI prints it and exits 1.

    ``failures`` lists one line per failed task; ``frame`` is the table written with ``--keep-going`` (else None).
    """

    def __init__(self, message: str, failures: list[str] | None = None, frame=None) -> None:
        super().__init__(message)
        self.failures = list(failures or [])
        self.frame = frame

    def __reduce__(self):  # picklable across worker processes with its fields
        return (type(self), (str(self), self.failures, self.frame))
