"""The one exception type for bad user input; the CLI prints its message as one line and exits 2."""


class UserError(Exception):
    """A problem with what the user gave us (a flag, a file, a dataset), worded for the user."""
