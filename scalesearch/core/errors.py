"""The one exception type for bad user input; the CLI prints its message as one line and exits 2.
Also `first_line`, how another library's exception is quoted inside such a message."""


class UserError(Exception):
    """A problem with what the user gave us (a flag, a file, a dataset), worded for the user."""


def first_line(error: BaseException) -> str:
    """The error's type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
