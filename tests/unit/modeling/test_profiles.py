"""Honest profiles: what each real profile needs is checked before anything is downloaded or loaded."""

import pytest
import torch

from modft_utils import modeling, plan
from modft_utils.config import ProfileError, load_profile


def test_fp8_checkpoint_with_4bit_is_refused_before_loading(root):
    # requires_cuda is lifted so the next check is reached on this CPU machine.
    profile = load_profile(root / "params" / "minimax_m2.yaml", {"model.requires_cuda": False})
    with pytest.raises(ProfileError, match=r"pre-quantized checkpoint \(fp8\).*bf16 copy.*load_in_4bit: false"):
        modeling.preflight(profile)


def test_minimax_profile_refused_on_cpu_naming_the_fix(root):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ProfileError, match="needs a CUDA GPU.*params/tiny.yaml"):
        modeling.ensure_base(load_profile(root / "params" / "minimax_m2.yaml"))


def test_unknown_model_id_is_named(root):
    profile = load_profile(
        root / "params" / "minimax_m2.yaml", {"model.requires_cuda": False, "model.id": "nobody/no-such-model-xyz"}
    )
    with pytest.raises(ProfileError, match="nobody/no-such-model-xyz"):
        modeling.preflight(profile)


def test_local_folder_without_config_is_named(root, tmp_path):
    profile = load_profile(
        root / "params" / "minimax_m2.yaml", {"model.requires_cuda": False, "model.id": str(tmp_path)}
    )
    with pytest.raises(ProfileError, match="config.json"):
        modeling.ensure_base(profile)


def test_gpu_24gb_profile_fits_one_24gb_gpu_and_minimax_does_not(root):
    small = plan.plan(load_profile(root / "params" / "gpu_24gb.yaml"), gpu_memory="24GiB")
    assert small.fits and small.total_bytes < 24 * 2**30
    big = plan.plan(load_profile(root / "params" / "minimax_m2.yaml"), gpu_memory="24GiB")
    assert not big.fits and big.total_bytes > 100 * 2**30
    # The stock bitsandbytes path (experts left 16-bit) does not fit the small profile either.
    assert not plan.plan(load_profile(root / "params" / "gpu_24gb.yaml"), gpu_memory="24GiB", experts_4bit=False).fits


def test_gpu_24gb_base_architecture_takes_the_same_4bit_experts_path():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from modft_utils.modeling import has_4bit_experts, quantize_experts

    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(
        hidden_size=128,
        intermediate_size=256,
        moe_intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_experts=8,
        num_experts_per_tok=2,
        vocab_size=256,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )
    model = Qwen3MoeForCausalLM(cfg).eval()
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        before = model(x).logits
    assert quantize_experts(model) == 2 and has_4bit_experts(model)
    with torch.no_grad():
        after = model(x).logits
    assert float((after - before).norm() / before.norm()) < 0.05  # NF4's usual error, diluted by the residual stream
