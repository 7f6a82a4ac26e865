"""The base model: which one a profile names, its config read without weights, the tiny and GGUF bases
built once, loading in 4-bit (NF4 experts included), LoRA configs and vocabulary extension.

What notebooks, the CLI and tests call; the modules beside this file hold the rest."""

from modft_utils.modeling.basecfg import (
    PARTS,
    REPO_ROOT,
    PlanError,
    Tensor,
    count_params,
    head_dim,
    read_model_config,
    tensors,
)
from modft_utils.modeling.cache import sha256_file
from modft_utils.modeling.gguf import GGUFError
from modft_utils.modeling.load import (
    BaseRef,
    domain_lora_config,
    ensure_base,
    load_base,
    load_merged,
    load_tokenizer,
    lora_config,
    preflight,
)
from modft_utils.modeling.quant import (
    NF4Experts,
    check_lora_targets,
    has_4bit_experts,
    memory_vs_bf16,
    quantize_experts,
)
from modft_utils.modeling.vocab import (
    EXTENSION_FILE,
    VocabError,
    VocabExtension,
    choose_words,
    describe,
    extend_model,
    load_decision,
    save_decision,
)

__all__ = [
    "EXTENSION_FILE",
    "BaseRef",
    "GGUFError",
    "NF4Experts",
    "PARTS",
    "PlanError",
    "REPO_ROOT",
    "Tensor",
    "VocabError",
    "VocabExtension",
    "check_lora_targets",
    "choose_words",
    "count_params",
    "describe",
    "domain_lora_config",
    "ensure_base",
    "extend_model",
    "has_4bit_experts",
    "head_dim",
    "load_base",
    "load_decision",
    "load_merged",
    "load_tokenizer",
    "lora_config",
    "memory_vs_bf16",
    "preflight",
    "quantize_experts",
    "read_model_config",
    "save_decision",
    "sha256_file",
    "tensors",
]
