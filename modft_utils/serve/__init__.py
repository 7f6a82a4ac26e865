"""Serving the stack: exports for engines, checked against the live stack.

What notebooks, the CLI and tests call; the modules beside this file hold the rest."""

from modft_utils.serve.export import (
    EXPORT_RECORD,
    ExportError,
    dequantized_loader,
    export_combined,
    export_merged,
    full_precision_loader,
    parity_report,
)

__all__ = [
    "EXPORT_RECORD",
    "ExportError",
    "dequantized_loader",
    "export_combined",
    "export_merged",
    "full_precision_loader",
    "parity_report",
]
