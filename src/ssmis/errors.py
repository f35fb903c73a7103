"""User-facing errors.

Anything the user can fix (a missing file, a bad config value, a malformed dataset) is raised as
:class:`SSMISError`; the CLI prints its message on one line and exits with status 2, never with a
traceback. Messages name the file or field and say what was expected.
"""


class SSMISError(Exception):
    """A problem with the user's input, reported as one line and exit status 2."""
