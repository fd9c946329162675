"""Errors raised for bad user input: one readable line that names the file and the fix."""


class DataError(ValueError):
    """Bad input data (missing file, wrong column, unknown label...). The message is user-facing."""


class ImageReadError(DataError):
    """An image file exists but cannot be decoded."""
