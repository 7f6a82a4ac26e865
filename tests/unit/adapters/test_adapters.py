"""Adapter control: the invariants the rollback policy rests on, checked as numbers."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import default_data_collator

from modft_utils import adapters, evaluate, modeling
from modft_utils.adapters import load_adapter
from modft_utils.config import LoraSpec, TrainSpec
from modft_utils.modeling import BaseRef


def _blocks(n=16, length=24, seed=0):
    # Counting sequences with random starts: a pattern LoRA on attention can pick up in a few steps.
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, 90, (n, 1), generator=g)
    ids = ((starts + torch.arange(length)) % 90 + 2).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


@pytest.fixture
def base(micro_profile):
    return modeling.load_base(micro_profile, BaseRef(micro_profile.model.id))


def _train(model, name, tmp_path, steps=3, seed=0):
    spec = TrainSpec(
        max_steps=steps, batch_size=4, eval_steps=steps, logging_steps=1, warmup_steps=0, learning_rate=5e-2, seed=seed
    )
    return adapters.train_adapter(
        model,
        name,
        _blocks(),
        evaluate.held_out_nll(_blocks(4, seed=1)),
        spec,
        tmp_path / name,
        default_data_collator,
        progress=False,
    )


def test_base_is_4bit_and_frozen(base):
    import bitsandbytes as bnb

    assert isinstance(base.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert not any(p.requires_grad for p in base.parameters())


def test_peft_set_adapter_trap_and_activate_fix(base, tmp_path):
    model = adapters.add_adapter(base, "domain", modeling.lora_config(LoraSpec(r=4, alpha=8)))
    model = adapters.add_adapter(model, "task", modeling.lora_config(LoraSpec(r=2, alpha=4)))
    model.base_model.set_adapter(["domain", "task"])  # PEFT's own call: both trainable again
    counts = adapters.trainable_by_adapter(model)
    assert counts["domain"] > 0 and counts["task"] > 0
    with pytest.raises(adapters.AdapterError, match="other parameters are trainable"):
        adapters.check_only_trainable(model, "task")
    adapters.activate(model, ["domain", "task"], trainable="task")
    assert set(adapters.trainable_by_adapter(model)) == {"task"}
    assert adapters.check_only_trainable(model, "task") == counts["task"]


def test_domain_frozen_bit_identical_after_task_training(base, tmp_path):
    model = adapters.add_adapter(base, "domain", modeling.lora_config(LoraSpec(r=4, alpha=8)))
    _train(model, "domain", tmp_path)
    before = adapters.fingerprint(adapters.adapter_state(model, "domain"))
    model = adapters.add_adapter(model, "task", modeling.lora_config(LoraSpec(r=2, alpha=4)))
    adapters.activate(model, ["domain", "task"], trainable="task")
    result = _train(model, "task", tmp_path)
    assert result.frozen_unchanged == {"domain": True}
    assert adapters.fingerprint(adapters.adapter_state(model, "domain")) == before


def test_disabling_adapters_equals_separately_loaded_models(micro_profile, base, tmp_path):
    ref = BaseRef(micro_profile.model.id)
    model = adapters.add_adapter(base, "domain", modeling.lora_config(LoraSpec(r=4, alpha=8)))
    domain = _train(model, "domain", tmp_path)
    model = adapters.add_adapter(model, "task", modeling.lora_config(LoraSpec(r=2, alpha=4)))
    adapters.activate(model, ["domain", "task"], trainable="task")
    _train(model, "task", tmp_path)
    x = torch.randint(2, 96, (2, 20), generator=torch.Generator().manual_seed(3))

    adapters.activate(model, ["domain", "task"])
    full = evaluate.logits(model, x)
    adapters.activate(model, ["domain"])
    task_off = evaluate.logits(model, x)
    adapters.activate(model, [])
    all_off = evaluate.logits(model, x)

    base_domain = load_adapter(modeling.load_base(micro_profile, ref), domain.adapter_dir, "domain")
    adapters.activate(base_domain, ["domain"])
    bare = modeling.load_base(micro_profile, ref)
    assert evaluate.max_abs_diff(task_off, evaluate.logits(base_domain, x)) == 0.0
    assert evaluate.max_abs_diff(all_off, evaluate.logits(bare, x)) == 0.0
    assert evaluate.max_abs_diff(full, task_off) > 0.0  # the task adapter does something


def test_saving_an_adapter_does_not_change_the_4bit_base(base, tmp_path):
    x = torch.randint(2, 96, (1, 16))
    before = evaluate.logits(base, x)
    model = adapters.add_adapter(base, "domain", modeling.lora_config(LoraSpec(r=4, alpha=8)))
    adapters.save_adapter(model, "domain", tmp_path / "a")
    adapters.save_adapter(model, "domain", tmp_path / "b")
    adapters.activate(model, [])
    assert evaluate.max_abs_diff(before, evaluate.logits(model, x)) == 0.0


def test_switch_flips_flags_without_copying_weights(base):
    model = adapters.add_adapter(base, "domain", modeling.lora_config(LoraSpec(r=4, alpha=8)))
    model = adapters.add_adapter(model, "task", modeling.lora_config(LoraSpec(r=2, alpha=4)))
    ptrs = {k: p.data_ptr() for k, p in model.named_parameters()}
    for stack in ([], ["domain"], ["task"], ["domain", "task"]):
        adapters.activate(model, stack)
        assert adapters.active_adapters(model) == stack
    assert ptrs == {k: p.data_ptr() for k, p in model.named_parameters()}
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(adapters.AdapterError, match="not loaded"):
        adapters.activate(model, ["nope"])


def test_saved_adapter_layout_and_load_refusals(micro_profile, base, tmp_path):
    model = adapters.add_adapter(base, "domain", modeling.lora_config(LoraSpec(r=4, alpha=8)))
    out = adapters.save_adapter(model, "domain", tmp_path / "domain")
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ] or {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    ref = BaseRef(micro_profile.model.id)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((out / "adapter_config.json").read_text())
    torch.save({}, pickled / "adapter_model.bin")
    with pytest.raises(adapters.AdapterError, match="pickle"):
        load_adapter(modeling.load_base(micro_profile, ref), pickled, "domain")

    # A rank-2 adapter's file under a rank-4 config: shapes disagree, PEFT must not load it quietly.
    other = adapters.add_adapter(
        modeling.load_base(micro_profile, ref),
        "domain",
        modeling.lora_config(LoraSpec(r=4, alpha=8, target_modules=["q_proj"])),
    )
    partial = adapters.save_adapter(other, "domain", tmp_path / "partial")
    cfg = (out / "adapter_config.json").read_text()
    (partial / "adapter_config.json").write_text(cfg)  # claims all four projections, file has only q_proj
    with pytest.raises(adapters.AdapterError, match="missing from the file"):
        load_adapter(modeling.load_base(micro_profile, ref), partial, "domain")


def test_training_is_deterministic(micro_profile, tmp_path):
    ref = BaseRef(micro_profile.model.id)
    losses = []
    for i in range(2):
        model = adapters.add_adapter(
            modeling.load_base(micro_profile, ref), "domain", modeling.lora_config(LoraSpec(r=4, alpha=8))
        )
        result = _train(model, "domain", tmp_path / str(i), steps=8)
        losses.append([loss for _, loss in adapters.loss_curves(result.log_history)["train"]])
    assert len(losses[0]) == 8
    torch.testing.assert_close(losses[0], losses[1])
    assert losses[0][-1] < losses[0][0]


def test_the_held_out_loss_of_the_last_step_is_the_saved_adapters(micro_profile, base, tmp_path):
    """Notebooks 02 and 03 take their held-out numbers from training's last step instead of measuring
    again: that value must be what the same measurement gives afterwards, to the bit, at every
    eval_steps too, and with or without a collator (perplexity, answer NLL)."""
    model = adapters.add_adapter(base, "domain", modeling.lora_config(LoraSpec(r=4, alpha=8)))
    held = _blocks(6, seed=1)
    spec = TrainSpec(
        max_steps=5, batch_size=4, eval_steps=2, logging_steps=1, warmup_steps=0, learning_rate=5e-2, seed=0
    )
    result = adapters.train_adapter(
        model, "domain", _blocks(), evaluate.held_out_nll(held), spec, tmp_path / "d", default_data_collator,
        progress=False,
    )  # fmt: skip
    assert [step for step, _ in adapters.loss_curves(result.log_history)["eval"]] == [2, 4, 5]
    adapters.activate(model, ["domain"])
    assert result.final_eval_loss == evaluate.held_out_nll(held)(model)
    assert evaluate.perplexity(model, held) == pytest.approx(torch.tensor(result.final_eval_loss).exp().item())
    assert evaluate.answer_nll(model, held, default_data_collator) == evaluate.held_out_nll(
        held, default_data_collator
    )(model)
    # The saved adapter, loaded afresh, measures the same.
    fresh = load_adapter(
        modeling.load_base(micro_profile, BaseRef(micro_profile.model.id)), result.adapter_dir, "domain"
    )
    adapters.activate(fresh, ["domain"])
    assert evaluate.held_out_nll(held)(fresh) == result.final_eval_loss


def test_the_sft_loss_on_answer_positions_only_is_the_whole_heads(micro_profile, base, micro_tokenizer):
    """sft_collator keeps the LM head to the positions the loss reads (logits_to_keep, shift_labels):
    the loss, its gradients and the held-out NLL are those of the head over every position."""
    from modft_utils import data

    g = torch.Generator().manual_seed(3)
    rows = []
    for prompt, answer in [(7, 2), (11, 3), (4, 1), (9, 4)]:  # prompts padded to the longest row
        ids = torch.randint(3, 96, (prompt + answer,), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * prompt + ids[prompt:]})
    batch = data.sft_collator(micro_tokenizer)(rows)
    assert batch["logits_to_keep"].shape == batch["input_ids"].shape
    # Every answer token is predicted by the position before it, the first by the prompt's last.
    assert int(batch["logits_to_keep"].sum()) == batch["shift_labels"].numel() == 2 + 3 + 1 + 4
    model = adapters.add_adapter(base, "task", modeling.lora_config(LoraSpec(r=2, alpha=4)), seed=0, b_std=0.1)
    adapters.activate(model, ["task"], trainable="task")
    n = batch["shift_labels"].numel()

    def loss_and_grads(**kw):
        model.zero_grad()
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            num_items_in_batch=torch.tensor(n),
            **kw,
        )
        out.loss.backward()
        return out.loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    whole, whole_grads = loss_and_grads()
    kept, kept_grads = loss_and_grads(logits_to_keep=batch["logits_to_keep"], shift_labels=batch["shift_labels"])
    torch.testing.assert_close(kept, whole, rtol=1e-6, atol=0)
    for key in whole_grads:
        torch.testing.assert_close(kept_grads[key], whole_grads[key], rtol=1e-5, atol=1e-7, msg=key)
    plain = {k: v for k, v in batch.items() if k not in ("logits_to_keep", "shift_labels")}
    nll = evaluate.held_out_nll(Dataset.from_list(rows), data.sft_collator(micro_tokenizer), batch_size=4)(model)
    nll_plain = evaluate.held_out_nll(Dataset.from_list(rows), lambda _rows: plain, batch_size=4)(model)
    assert math.isclose(nll, nll_plain, rel_tol=1e-6) and math.isclose(nll, float(whole), rel_tol=1e-6)
