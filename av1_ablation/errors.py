"""Errors that carry a message meant for the user."""


class UserError(Exception):
    """Bad input or a missing tool: the CLI prints the message (no traceback) and exits 2.

    Messages name the problem and the fix.
    """


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that ``finally`` blocks and run bookkeeping run."""
