"""Held-out evaluation of adapter stacks (perplexity, task scores, logit parity), the promotion gate,
the rollback drills (notebook 05), figures, and the JupyterLab panels that compare stacks and roll back.

What notebooks, the CLI and tests call; the modules beside this file hold the rest."""

from modft_utils.evaluate.explorer import render_answers, rollback_panel, stack_explorer
from modft_utils.evaluate.plots import grid_bars, loss_curves
from modft_utils.evaluate.rollback import (
    force_and_roll_back,
    gate_candidate,
    promote_published,
    reference_logits,
    roll_back_domain,
    switch_and_compare,
    train_candidate,
    train_newer_versions,
)
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
    "force_and_roll_back",
    "gate_candidate",
    "generate",
    "generate_plain",
    "grid_bars",
    "grid_metrics",
    "grid_table",
    "logits",
    "loss_curves",
    "max_abs_diff",
    "perplexity",
    "promote_published",
    "promotion_gate",
    "reference_logits",
    "render_answers",
    "roll_back_domain",
    "rollback_panel",
    "score_line",
    "stack_explorer",
    "stack_scores",
    "switch_and_compare",
    "task_scores",
    "train_candidate",
    "train_newer_versions",
]
