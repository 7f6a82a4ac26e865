"""The one base every error of modft derives from (the lowest module: imports nothing).

Each part of the package has its own error family (``ProfileError``, ``DataError``, ``RegistryError``,
``AdapterError``, ...), and every family derives from :class:`ModftError`, so a caller that faces
people (the CLI, a server) turns any of them into one clear message and one exit code or status
without knowing the family. Families keep their built-in base too (``ValueError``, ``RuntimeError``)
so existing ``except ValueError`` code keeps working.
"""


class ModftError(Exception):
    """Input or state modft cannot use; the message names the key, file, row, adapter or version at fault."""


class DataError(ModftError, ValueError):
    """Input data that cannot be used; the message names the key, file, split or row."""
