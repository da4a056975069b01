"""The one user-facing error type.

Anything a user can cause (bad arguments, a corrupt store, a layout that does not fit)
raises :class:`LohpError` with one line that says what is wrong and how to fix it. The
CLI prints that line and exits with status 2; library users can catch it.
"""


class LohpError(Exception):
    """A user-facing error: one line, what is wrong and how to fix it."""

    exit_code = 2


def config_from_dict(cls, d: dict, what: str):
    """Moved to :func:`lohp.config.config_from_dict` (kept here for existing imports)."""
    from lohp.config import config_from_dict as strict

    return strict(cls, d, what)
