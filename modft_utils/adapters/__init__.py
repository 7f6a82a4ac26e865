"""LoRA adapters on the loaded base: which are active and which train (one module changes either),
the one training entry, and the one loader for saved or stored adapters (AdapterStack).

What notebooks, the CLI and tests call; the modules beside this file hold the rest."""

from modft_utils.adapters.stack import AdapterStack, ParentMismatchError, load_adapter
from modft_utils.adapters.state import (
    AdapterError,
    activate,
    active_adapters,
    adapter_state,
    add_adapter,
    check_only_trainable,
    combined,
    fingerprint,
    loaded_adapters,
    save_adapter,
    switcher,
    time_switch,
    trainable_by_adapter,
)
from modft_utils.adapters.train import loss_curves, train_adapter, training_arguments

__all__ = [
    "AdapterError",
    "AdapterStack",
    "ParentMismatchError",
    "activate",
    "active_adapters",
    "adapter_state",
    "add_adapter",
    "check_only_trainable",
    "combined",
    "fingerprint",
    "load_adapter",
    "loaded_adapters",
    "loss_curves",
    "save_adapter",
    "switcher",
    "time_switch",
    "train_adapter",
    "trainable_by_adapter",
    "training_arguments",
]
