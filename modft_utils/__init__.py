"""modft_utils: the helper package behind the modft notebooks.

Importing it has no side effects (no seeding, no downloads); each concern lives in its own module.
"""

__version__ = "0.1.0"
