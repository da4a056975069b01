"""The one user-facing error type.

Anything a user can cause (bad arguments, a corrupt store, a layout that does not fit)
raises :class:`LohpError` with one line that says what is wrong and how to fix it. The
CLI prints that line and exits with status 2; library users can catch it.
"""


class LohpError(Exception):
    """A user-facing error: one line, what is wrong and how to fix it."""

    exit_code = 2


def config_from_dict(cls, d: dict, what: str):
    """Build the dataclass ``cls`` from ``d``, refusing unknown keys with one line."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise LohpError(f"unknown {what} setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return cls(**d)
