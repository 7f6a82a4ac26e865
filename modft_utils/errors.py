"""The error every data-preparing module raises for input it cannot use (the lowest module: imports nothing)."""


class DataError(ValueError):
    """Input data that cannot be used; the message names the key, file, split or row."""
