"""Canaries: each reproduces, without our fix, the upstream behaviour a fix in modft_utils.upstream_fixes
works around, and fails once upstream changes it. A failing canary after an upgrade names the fix to
delete (and its callers to simplify); the behaviour tests elsewhere keep checking that the fixes work.
"""

import logging
import warnings

import pytest
import torch

from modft_utils import upstream_fixes

FIXED_UPSTREAM = "{lib} no longer behaves as upstream_fixes.{fix} works around: delete the fix and its callers"


def _micro_peft(micro_base_dir, *, tokens: bool):
    """The micro base with adapter "domain" (training token rows if ``tokens``) and a plain "task"."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(micro_base_dir)
    domain = LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=["q_proj"],
        trainable_token_indices={"embed_tokens": [3, 4]} if tokens else None,
    )
    model = get_peft_model(base, domain, adapter_name="domain")
    model.add_adapter("task", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    return model


def test_canary_peft_only_warns_about_missing_adapter_keys(micro_base_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    model = _micro_peft(micro_base_dir, tokens=False)
    model.save_pretrained(tmp_path, selected_adapters=["domain"])
    weights = (
        tmp_path / "domain" / "adapter_model.safetensors"
        if (tmp_path / "domain").is_dir()
        else tmp_path / "adapter_model.safetensors"
    )
    kept = {k: v for k, v in load_file(str(weights)).items() if "lora_B" not in k}
    save_file(kept, str(weights))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(micro_base_dir), str(weights.parent))
    assert any("missing adapter keys" in str(w.message) for w in caught), FIXED_UPSTREAM.format(
        lib="peft", fix="adapter_key_mismatch"
    )
    missing, unexpected = upstream_fixes.adapter_key_mismatch(loaded, weights, "default")
    assert missing and not unexpected  # what the fix turns into an error


def test_canary_bitsandbytes_cpu_dequantize_is_wrong_for_narrow_rows():
    from bitsandbytes.functional import quantize_4bit

    torch.manual_seed(0)
    weight = torch.randn(32, 32)
    packed, state = quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=False)

    def error(shape) -> float:
        out = torch.ops.bitsandbytes.dequantize_4bit.default(packed, state.absmax, 64, "nf4", shape, torch.float32)
        return float((out.reshape(32, 32) - weight).norm() / weight.norm())

    assert error((1, 32 * 32)) < 0.12  # the shape the fix hands the kernel: right
    assert error((32, 32)) > 0.2, FIXED_UPSTREAM.format(lib="bitsandbytes", fix="bnb_dequantize_shape")


def test_canary_bitsandbytes_repacks_4bit_weights_for_cpu_bf16():
    from bitsandbytes.nn import Linear4bit

    layer = Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    assert hasattr(layer, "support_avx512bf16_for_cpu"), FIXED_UPSTREAM.format(
        lib="bitsandbytes", fix="keep_cpu_4bit_exact"
    )
    upstream_fixes.keep_cpu_4bit_exact(torch.nn.Sequential(layer))
    assert layer.support_avx512bf16_for_cpu is False


def _ops(fn) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_canary_torch_matmul_copies_the_weight_for_a_last_position_view():
    """torch 2.13.0 gives a [rows, 1, hidden] view of a longer sequence to bmm, after copying the weight once per row."""
    weight = torch.randn(64, 16)
    hidden = torch.randn(4, 7, 16)
    last = hidden[:, -1:, :]
    ops = _ops(lambda: torch.nn.functional.linear(last, weight))
    assert "aten::bmm" in ops, FIXED_UPSTREAM.format(lib="torch", fix="contiguous_lm_head_input")
    assert "aten::bmm" not in _ops(lambda: torch.nn.functional.linear(last.contiguous(), weight))


def test_the_lm_head_gets_a_contiguous_input(micro_base_dir):
    """The fix: the loaded model's LM head multiplies a last-position view with one mm, same logits."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(micro_base_dir).eval()
    head = model.get_output_embeddings()
    last = torch.randn(4, 7, head.in_features)[:, -1:, :]
    before = head(last)
    upstream_fixes.contiguous_lm_head_input(model)
    upstream_fixes.contiguous_lm_head_input(model)  # idempotent: one hook
    assert len(head._forward_pre_hooks) == 1
    ops = _ops(lambda: head(last))
    assert "aten::bmm" not in ops
    torch.testing.assert_close(head(last), before)


def test_canary_transformers_picks_a_half_written_checkpoint(tmp_path):
    from transformers.trainer_utils import get_last_checkpoint

    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-5").mkdir()  # cut short: no trainer_state.json
    assert upstream_fixes.last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-5"), FIXED_UPSTREAM.format(
        lib="transformers", fix="last_complete_checkpoint"
    )


def test_canary_transformers_resume_keeps_only_the_first_active_adapter(micro_base_dir, tmp_path, caplog):
    from transformers import Trainer, TrainingArguments

    model = _micro_peft(micro_base_dir, tokens=False)
    model.base_model.set_adapter(["domain", "task"])
    model.save_pretrained(tmp_path / "checkpoint-1")
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True))
    with caplog.at_level(logging.WARNING):
        trainer._load_from_checkpoint(str(tmp_path / "checkpoint-1"))
    trainable = {
        n.split(".lora_")[1].split(".")[1] for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n
    }
    assert model.active_adapters == ["domain"] and trainable == {"domain"}, FIXED_UPSTREAM.format(
        lib="transformers", fix="restore_adapter"
    )


def test_canary_xdist_loadgroup_marks_do_not_reach_the_scheduler(request):
    """tests/conftest.py's pytest_xdist_make_scheduler, not `--dist loadgroup`, keeps the notebook chain on
    one worker: pytest-xdist 3.8 tags a grouped test by rewriting ``item._nodeid``, which pytest 9.2
    no longer reads (pytest-dev/pytest-xdist#1386, fix proposed in #1388). Seen on pytest-xdist 3.8.0,
    pytest 9.2.0."""
    from xdist.remote import WorkerInteractor

    class LoadGroupConfig:
        def getvalue(self, name):
            return name == "loadgroup"

    item = request.node
    item.add_marker(pytest.mark.xdist_group("canary"))
    WorkerInteractor.pytest_collection_modifyitems(None, LoadGroupConfig(), [item])
    rewritten = getattr(item, "_nodeid", "").endswith("@canary")  # what xdist 3.8 writes
    assert rewritten and not item.nodeid.endswith("@canary"), (
        "pytest-xdist's loadgroup tags node ids again: tests/conftest.py's scheduler could give way to "
        "`--dist loadgroup` with xdist_group marks"
    )
