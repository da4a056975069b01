"""The one user-facing error type.

Anything a user can cause (bad arguments, a corrupt store, a layout that does not fit)
raises :class:`LohpError` with one line that says what is wrong and how to fix it. The
CLI prints that line and exits with status 2; library users can catch it.
"""


class LohpError(Exception):
    """A user-facing error: one line, what is wrong and how to fix it."""

    exit_code = 2

