"""The project's own errors: each says where (file, line/row, field or config key), what was expected, what was
got, and how to fix it. The entry points print them as ``error: <message>`` plus a one-line ``hint:`` and exit 2,
without a traceback (``--debug`` or ``SAFETUNE_DEBUG=1`` shows it); anything else is a bug and keeps its traceback.

Each class also derives from the built-in exception it replaces (``ValueError``, ``FileNotFoundError``,
``RuntimeError``), so code that catches those keeps working.
"""

from __future__ import annotations


class SafetuneError(Exception):
    """Base of every error safetune explains to the user. ``hint``: one line saying what to do."""

    hint: str = ""

    def __init__(self, message: str = "", *, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def add_context(self, context: str) -> SafetuneError:
        """Prefix the message with where it happened (e.g. the config key of a data source); returns self."""
        if context and not self.message.startswith(context):
            self.args = (f"{context}: {self.message}", *self.args[1:])
        return self


class InputError(SafetuneError, ValueError):
    """A value the user gave (a config key, an option, a row) is invalid."""

    hint = "fix the value named above (`<command> --cfg job` prints the composed config with every key)"


class MissingInputError(SafetuneError, FileNotFoundError):
    """A file or directory the user named does not exist or is not what it should be."""

    hint = "check the path (relative paths are read from the directory the command runs in; `ls` it)"


class EnvironmentProblem(SafetuneError, RuntimeError):
    """Something the machine lacks: the hub is unreachable, a package or a GPU is missing."""

    hint = "install what is named above, or use local files (`--debug` shows where it failed)"


class WorkExistsError(SafetuneError, FileExistsError):
    """The output directory holds finished work that this command would overwrite."""

    hint = "pick another output directory, or overwrite=true to replace the finished work"
