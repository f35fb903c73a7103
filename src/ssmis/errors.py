"""User-facing errors.

Anything the user can fix (a missing file, a bad config value, a malformed dataset) is raised as
:class:`SSMISError`; the CLI prints its message on one line and exits with status 2, never with a
traceback. Messages name the file or field and say what was expected.
"""


class SSMISError(Exception):
    """A problem with the user's input, reported as one line and exit status 2."""


class RunInterrupted(SSMISError):
    """Training stopped by SIGINT/SIGTERM; the message says whether and how it can resume.

    ``exit_code`` follows the shell convention: 128 + the signal number (130 SIGINT, 143
    SIGTERM), so a cluster scheduler sees a preempted job, not a failed one."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
