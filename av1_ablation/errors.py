"""Errors that carry a message meant for the user."""
import signal


class UserError(Exception):
    """Bad input or a missing tool: the CLI prints the message (no traceback) and exits 2.

    Messages name the problem and the fix.
    """


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that ``finally`` blocks and run bookkeeping run."""


def raise_terminated(signum, frame):
    """SIGTERM handler: unwind like Ctrl-C does, so cleanup code runs for both."""
    raise Terminated(f"received signal {signum} ({signal.Signals(signum).name})")
