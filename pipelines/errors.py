"""Errors the user can fix: one readable line that names the file, row, key or option and the fix.

`UserError` is the base of every such error; the CLI prints exactly these as one line (exit code 2). Anything else is
a programming error and keeps its traceback."""


class UserError(Exception):
    """Something the user can fix (input data, a config value, an option, an output path). The message is user-facing."""


class DataError(UserError, ValueError):
    """Bad input data (missing file, wrong column, unknown label...)."""


class ImageReadError(DataError):
    """An image file exists but cannot be decoded."""


class OptionError(UserError, ValueError):
    """A bad argument to a command or a public function (a count, a layer name, a format)."""
