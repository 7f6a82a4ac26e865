"""Exports of an adapter stack compute what the live stack computes, and say so with a number."""

import json

import pytest
import torch

from modft_utils import adapters, evaluate, modeling, serve
from modft_utils.config import LoraSpec
from modft_utils.modeling import BaseRef

X = torch.randint(2, 96, (2, 12), generator=torch.Generator().manual_seed(0))
DOMAIN, TASK = LoraSpec(r=4, alpha=8), LoraSpec(r=2, alpha=4)


@pytest.fixture(scope="module")
def adapter_dirs(micro_profile, tmp_path_factory, random_adapter):
    out = tmp_path_factory.mktemp("export_adapters")
    model = modeling.load_base(micro_profile, BaseRef(micro_profile.model.id), load_in_4bit=False)
    model = random_adapter(model, "domain", DOMAIN, 1)
    model = random_adapter(model, "task", TASK, 2)
    return {name: adapters.save_adapter(model, name, out / name) for name in ("domain", "task")}


def _live(profile, dirs, *, four_bit):
    model = modeling.load_base(profile, BaseRef(profile.model.id), load_in_4bit=four_bit)
    for name, path in dirs.items():
        model = adapters.load_adapter(model, path, name)
    adapters.activate(model, list(dirs))
    return model


@pytest.mark.parametrize("four_bit", [False, True], ids=["fp32", "4bit"])
def test_combined_adapter_equals_live_stack(micro_profile, adapter_dirs, tmp_path, four_bit):
    live = _live(micro_profile, adapter_dirs, four_bit=four_bit)
    before = evaluate.logits(live, X)
    ptrs = {k: p.data_ptr() for k, p in live.named_parameters()}
    out = serve.export_combined(live, ["domain", "task"], tmp_path / "stack")

    # The live stack is left as it was: same adapters, same active set, same weights, same numbers.
    assert adapters.loaded_adapters(live) == ["domain", "task"]
    assert adapters.active_adapters(live) == ["domain", "task"]
    assert adapters.trainable_by_adapter(live) == {}
    assert ptrs == {k: p.data_ptr() for k, p in live.named_parameters()}
    assert evaluate.max_abs_diff(before, evaluate.logits(live, X)) == 0.0

    assert json.loads((out / "adapter_config.json").read_text())["r"] == DOMAIN.r + TASK.r
    served = adapters.load_adapter(
        modeling.load_base(micro_profile, BaseRef(micro_profile.model.id), load_in_4bit=four_bit), out, "stack"
    )
    adapters.activate(served, ["stack"])
    report = serve.parity_report(live, served, X)
    print(f"\ncombined ({'4-bit' if four_bit else 'fp32'} base): {report['verdict']}")
    assert report["within_1e-5"] and report["top1_agreement"] == 1.0


def test_merged_model_equals_live_stack_in_fp32(micro_profile, adapter_dirs, tmp_path):
    live = _live(micro_profile, adapter_dirs, four_bit=False)
    out = serve.export_merged(
        serve.full_precision_loader(micro_profile, BaseRef(micro_profile.model.id)),
        adapter_dirs,
        tmp_path / "merged",
        dtype=torch.float32,
    )
    assert not list(out.glob("*.bin")) and list(out.glob("*.safetensors"))
    record = json.loads((out / serve.EXPORT_RECORD).read_text())
    assert [a["name"] for a in record["adapters"]] == ["domain", "task"] and record["dtype"] == "float32"

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in k for k, _ in merged.named_parameters())
    report = serve.parity_report(live, merged, X)
    print(f"\nmerged fp32 vs live fp32 stack: {report['verdict']}")
    assert report["within_1e-5"]

    # Against the stack the workbook runs (4-bit base) the merge is not exact, and the report says so.
    report_4bit = serve.parity_report(_live(micro_profile, adapter_dirs, four_bit=True), merged, X)
    print(f"merged fp32 vs live 4-bit stack: {report_4bit['verdict']}")
    assert not report_4bit["exact"] and not report_4bit["within_1e-5"]
    assert report_4bit["max_abs_diff"] > 0 and report_4bit["verdict"].startswith("NOT equal")


def test_adapters_on_different_modules_combine_over_their_union(micro_profile, adapter_dirs, tmp_path, random_adapter):
    """A task adapter on q and v only, over a domain adapter on more: the combined adapter covers both
    sets, with zero rows where one adapter lacks a module, and computes the stack."""
    live = _live(micro_profile, adapter_dirs, four_bit=False)
    live = random_adapter(live, "qv", LoraSpec(r=2, alpha=4, target_modules=["q_proj", "v_proj"]), 3)
    adapters.activate(live, ["domain", "qv"])
    domain_targets = set(live.peft_config["domain"].target_modules)
    assert {"q_proj", "v_proj"} < domain_targets  # the domain adapter adapts modules "qv" does not
    out = serve.export_combined(live, ["domain", "qv"], tmp_path / "union")
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == domain_targets and config["r"] == DOMAIN.r + 2
    served = adapters.load_adapter(
        modeling.load_base(micro_profile, BaseRef(micro_profile.model.id), load_in_4bit=False), out, "stack"
    )
    adapters.activate(served, ["stack"])
    report = serve.parity_report(live, served, X)
    assert report["within_1e-5"] and report["top1_agreement"] == 1.0, report["verdict"]


def test_refusals(micro_profile, adapter_dirs, tmp_path):
    four_bit_loader = lambda: modeling.load_base(micro_profile, BaseRef(micro_profile.model.id))  # noqa: E731
    with pytest.raises(serve.ExportError, match="quantized base"):
        serve.export_merged(four_bit_loader, adapter_dirs, tmp_path / "merged")


def test_exports_are_checked_in_float32_when_the_stack_computes_in_bf16(micro_profile, adapter_dirs, tmp_path):
    """parity_reference: the bf16 stack recomputed in float32 (equal to one loaded in float32), or the
    live stack itself when it computes in float32 or the profile says ``live``."""
    bf16 = micro_profile.computing_in("bfloat16")
    live = _live(bf16, adapter_dirs, four_bit=True)
    assert next(p for n, p in live.named_parameters() if "lora_A" in n).dtype == torch.float32  # LoRA stays fp32
    reference, exact = serve.parity_reference(live, bf16, BaseRef(bf16.model.id), list(adapter_dirs.values()), None)
    assert reference is not live and exact.model.compute_dtype == "float32"
    assert adapters.active_adapters(reference) == ["domain", "task"]
    fp32 = _live(micro_profile, adapter_dirs, four_bit=True)
    assert serve.parity_report(fp32, reference, X)["exact"]
    assert serve.parity_reference(fp32, micro_profile, None, [], None) == (fp32, micro_profile)
    as_it_runs = bf16.model_copy(update={"compose": bf16.compose.model_copy(update={"parity_dtype": "live"})})
    assert serve.parity_reference(live, as_it_runs, None, [], None) == (live, as_it_runs)

    out = serve.export_combined(live, ["domain", "task"], tmp_path / "stack")
    served = adapters.load_adapter(modeling.load_base(exact, BaseRef(exact.model.id)), out, "stack")
    adapters.activate(served, ["stack"])
    assert serve.parity_report(reference, served, X)["within_1e-5"]


def test_bf16_fallbacks_are_exact(micro_profile, adapter_dirs):
    """In bf16 as in float32, switching adapters off gives what a base loaded without them computes,
    bit for bit: both sides compute the same way, in the same order."""
    bf16 = micro_profile.computing_in("bfloat16")
    live = _live(bf16, adapter_dirs, four_bit=True)
    adapters.activate(live, ["domain"])
    task_off = evaluate.logits(live, X)
    adapters.activate(live, [])
    all_off = evaluate.logits(live, X)
    assert (
        evaluate.max_abs_diff(
            task_off, evaluate.logits(_live(bf16, {"domain": adapter_dirs["domain"]}, four_bit=True), X)
        )
        == 0.0
    )
    assert evaluate.max_abs_diff(all_off, evaluate.logits(_live(bf16, {}, four_bit=True), X)) == 0.0
