"""Memory planning: will a profile's QLoRA training fit on a GPU, answered before anything is rented,
and measured on CPU to check the arithmetic.

What notebooks, the CLI and tests call; the modules beside this file hold the rest."""

from modft_utils.plan.measure import measure_training_peak
from modft_utils.plan.planner import plan

__all__ = ["measure_training_peak", "plan"]
