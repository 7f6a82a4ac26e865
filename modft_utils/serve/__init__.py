"""Serving the stack: exports for engines (``modft export --target vllm|peft|merged``, linted first),
checked against the live stack, and the workbook's own OpenAI-compatible server (``modft serve``:
named stacks on one loaded base, following the store's aliases).

What notebooks, the CLI and tests call; the modules beside this file hold the rest."""

from modft_utils.serve.command import add_export_command, add_serve_command, export_from_store, serve_main
from modft_utils.serve.engine import Busy, Engine, Job, Loaded, ServeError
from modft_utils.serve.export import (
    EXPORT_RECORD,
    ExportError,
    dequantized_loader,
    export_combined,
    export_merged,
    full_precision_loader,
    parity_reference,
    parity_report,
)
from modft_utils.serve.process import ServerProcess, free_port
from modft_utils.serve.server import Settings, create_app
from modft_utils.serve.stacks import StackSpec, StackSpecError, identity, parse_stack, stack_specs
from modft_utils.serve.targets import TARGETS, Finding, LintError, export_stack, lint, vllm_max_lora_rank

__all__ = [
    "EXPORT_RECORD",
    "TARGETS",
    "Busy",
    "Engine",
    "ExportError",
    "Finding",
    "Job",
    "LintError",
    "Loaded",
    "ServeError",
    "ServerProcess",
    "Settings",
    "StackSpec",
    "StackSpecError",
    "add_export_command",
    "add_serve_command",
    "create_app",
    "dequantized_loader",
    "export_combined",
    "export_from_store",
    "export_merged",
    "export_stack",
    "free_port",
    "full_precision_loader",
    "identity",
    "lint",
    "parity_reference",
    "parity_report",
    "parse_stack",
    "serve_main",
    "stack_specs",
    "vllm_max_lora_rank",
]
