"""The project's own errors: problems a user can fix, each message naming what and how.

The recipes print a ``UserError`` as one paragraph and exit non-zero, without a traceback; any
other exception is a bug and keeps its traceback. Errors of the Python world that a user
causes (a file that cannot be written, an image that cannot be decoded, an allocation that
does not fit) are translated into a ``UserError`` where they occur, not by a catch-all.
"""

from __future__ import annotations


class UserError(Exception):
    """A run cannot go on because of its input or its environment; the message says the fix."""

    def __init__(self, *args):
        # A DataLoader worker's error reaches the main process rebuilt from a message with the
        # worker's traceback in it; the user needs the original message only.
        if len(args) == 1 and isinstance(args[0], str) and "\nOriginal Traceback" in args[0]:
            marker = f"{type(self).__name__}: "
            args = (args[0].rsplit(marker, 1)[-1].strip(),)
        super().__init__(*args)


class ConfigWarning(UserWarning):
    """A setting that is allowed but probably not what was meant (lam with one learner)."""


class ConfigError(UserError, ValueError):
    """A configuration the run cannot use; the message names the key and the allowed values."""


class RunFolderError(UserError):
    """A run folder or one of its files cannot be created, written or read back."""


class OutOfMemoryError(UserError):
    """The networks or batches of a run do not fit into the memory of its device."""
