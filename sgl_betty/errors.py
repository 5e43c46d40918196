"""The project's own errors: problems a user can fix, each message naming what and how.

The recipes print a ``UserError`` as one paragraph and exit non-zero, without a traceback; any
other exception is a bug and keeps its traceback. Errors of the Python world that a user
causes (a file that cannot be written, an image that cannot be decoded, an allocation that
does not fit) are translated into a ``UserError`` where they occur, not by a catch-all.

Three more reach a user and are not ``UserError``s, since the recipes answer each differently:
``NonFiniteError`` (the run diverged: the message names where, the fix is the user's guess),
``RunInterrupted`` (a requested stop: the message says how to resume; its exit code is the
signal's) and ``UnknownOperationError`` (also a ``KeyError`` for the op registry's sake).
Every error class a user can meet is defined here, so that the layers below the recipes raise
them without importing each other.
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


class UnsafeFileError(RunFolderError):
    """A torch file that only unpickling arbitrary objects would read."""


class UnreadableFileError(RunFolderError):
    """A torch file that is truncated, damaged or not a torch file at all."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """The dataset's files are not on disk and downloading was not requested."""


class DatasetCorruptedError(UserError, RuntimeError):
    """The dataset's files are on disk but fail their checksum."""


class OutOfMemoryError(UserError):
    """The networks or batches of a run do not fit into the memory of its device."""


class UnrolledStepError(ValueError):
    """The optimizer of a lower problem takes a step the unrolled hypergradient cannot follow."""


class UnknownOperationError(KeyError, ValueError):
    """An op name that is not in the registry.

    A ValueError for users; also a KeyError so that the registry still behaves like a dict.
    """

    def __str__(self) -> str:
        # KeyError.__str__ would print the message inside quotes.
        return str(self.args[0])


class NonFiniteError(FloatingPointError):
    """A loss or hypergradient became NaN or infinite; the message names learner, stage and step."""


class RunInterrupted(Exception):
    """A signal stopped the run after a checkpoint; the message says how to resume."""
