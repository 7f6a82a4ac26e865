"""Held-out evaluation of adapter stacks (perplexity, task scores, logit parity), the promotion gate,
figures, and the JupyterLab panels that compare stacks and roll back.

What notebooks, the CLI and tests call; the modules beside this file hold the rest."""

from modft_utils.evaluate.explorer import render_answers, rollback_panel, stack_explorer
from modft_utils.evaluate.plots import grid_bars, loss_curves
from modft_utils.evaluate.scores import (
    STACKS,
    answer_nll,
    compare_answers,
    comparison_grid,
    generate,
    generate_plain,
    grid_metrics,
    grid_table,
    logits,
    max_abs_diff,
    perplexity,
    promotion_gate,
    score_line,
    stack_scores,
    task_scores,
)

__all__ = [
    "STACKS",
    "answer_nll",
    "compare_answers",
    "comparison_grid",
    "generate",
    "generate_plain",
    "grid_bars",
    "grid_metrics",
    "grid_table",
    "logits",
    "loss_curves",
    "max_abs_diff",
    "perplexity",
    "promotion_gate",
    "render_answers",
    "rollback_panel",
    "score_line",
    "stack_explorer",
    "stack_scores",
    "task_scores",
]
