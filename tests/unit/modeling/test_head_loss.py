"""The chunked LM-head loss (modeling.head_loss) against the model's own loss: value, LoRA gradients,
token NLL, where it applies and where it refuses, and the trainer's check on the first batch."""

from __future__ import annotations

import pytest
import torch

from modft_utils import adapters
from modft_utils.config import LoraSpec
from modft_utils.evaluate import scores
from modft_utils.modeling import head_loss


def _llama(vocab=80, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        **overrides,
    )
    return LlamaForCausalLM(config).eval()


def _micro_minimax(**overrides):
    from micro import micro_config
    from transformers import MiniMaxM2ForCausalLM

    torch.manual_seed(0)
    return MiniMaxM2ForCausalLM(micro_config(**overrides)).eval()


def _with_lora(model, random_adapter):
    spec = LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = random_adapter(model, "domain", spec, 1)
    adapters.activate(model, ["domain"], trainable="domain")
    return model


def _batch(vocab, *, pad_tail=True):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, vocab, (3, 11), generator=g)
    labels = ids.clone()
    if pad_tail:  # padding and a prompt the loss must not read
        labels[0, -4:] = -100
        labels[2, :3] = -100
    return ids, labels


def _lora_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("build", [_llama, _micro_minimax], ids=["llama", "minimax_m2"])
@pytest.mark.parametrize("chunk", [4, 1000], ids=["uneven-chunks", "one-chunk"])
def test_loss_and_lora_gradients_equal_the_models_own(build, chunk, random_adapter):
    model = _with_lora(build(), random_adapter)
    vocab = model.config.vocab_size
    ids, labels = _batch(vocab)
    head = head_loss.head_of(model)
    assert head is not None
    model.train()
    own = model(input_ids=ids, labels=labels).loss
    own.backward()
    want = _lora_grads(model)
    model.zero_grad(set_to_none=True)
    ours = head_loss.causal_lm_loss(head, head_loss.decoder_hidden(head, ids), labels, chunk=chunk)
    ours.backward()
    got = _lora_grads(model)
    assert float(ours) == pytest.approx(float(own), rel=1e-6)
    assert want.keys() == got.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_num_items_sums_over_the_accumulated_batch(random_adapter):
    """Under gradient accumulation the Trainer passes the token count of all micro-batches."""
    model = _with_lora(_llama(), random_adapter)
    ids, labels = _batch(model.config.vocab_size)
    head = head_loss.head_of(model)
    with torch.no_grad():
        own = model(input_ids=ids, labels=labels, num_items_in_batch=torch.tensor(100)).loss
        ours = head_loss.causal_lm_loss(head, head_loss.decoder_hidden(head, ids), labels, num_items=100)
    assert float(ours) == pytest.approx(float(own), rel=1e-6)


def test_token_nll_is_the_sum_the_full_logits_give(random_adapter, monkeypatch):
    model = _with_lora(_micro_minimax(), random_adapter)
    ids, labels = _batch(model.config.vocab_size)
    batch = {"input_ids": ids, "labels": labels}
    chunked = scores.token_nll(model, [batch])
    monkeypatch.setattr(head_loss, "head_of", lambda m, **k: None)
    full = scores.token_nll(model, [batch])
    assert chunked[1] == full[1] == int((labels[:, 1:] != -100).sum())
    assert chunked[0] == pytest.approx(full[0], rel=1e-6)


def test_head_of_refuses_what_is_not_a_plain_frozen_head(random_adapter):
    trainable = _llama()  # a bare model: every weight, the head's too, requires a gradient
    assert head_loss.head_of(trainable, training=False) is not None  # scoring takes no gradient
    assert head_loss.head_of(trainable) is None  # a head being trained needs its own
    assert head_loss.head_of(_micro_minimax(output_router_logits=True)) is None  # the router loss is added
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert head_loss.head_of(gpt2) is None  # not on the list of architectures read
    lora_on_head = random_adapter(
        _llama(), "domain", LoraSpec(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "lm_head"]), 1
    )
    assert head_loss.head_of(lora_on_head) is None


def _train(tmp_path, model, blocks):
    from transformers import default_data_collator

    from modft_utils.config import TrainSpec

    spec = TrainSpec(max_steps=2, batch_size=2, eval_steps=2, logging_steps=1, warmup_steps=0, save_steps=0)
    return adapters.train_adapter(
        model, "domain", blocks, None, spec, tmp_path, default_data_collator, progress=False, resume=False
    )


def _blocks(vocab):
    from datasets import Dataset

    ids, _ = _batch(vocab, pad_tail=False)
    rows = [{"input_ids": r, "labels": r} for r in ids.tolist()] * 2
    return Dataset.from_list(rows)


def test_training_takes_the_chunked_loss_after_checking_it(tmp_path, random_adapter):
    model = _with_lora(_llama(), random_adapter)
    result = _train(tmp_path, model, _blocks(model.config.vocab_size))
    assert result.loss_path == "chunked head"


def test_training_keeps_the_models_loss_when_the_chunked_one_disagrees(tmp_path, random_adapter, monkeypatch):
    real = head_loss.causal_lm_loss
    monkeypatch.setattr(head_loss, "causal_lm_loss", lambda *a, **k: real(*a, **k) + 1.0)
    model = _with_lora(_llama(), random_adapter)
    result = _train(tmp_path, model, _blocks(model.config.vocab_size))
    assert result.loss_path.startswith("model (the chunked loss")


def test_planner_prices_the_chunk_not_the_batch_of_logits():
    from modft_utils.plan import activations as act

    arch = act.Arch(
        hidden=576, layers=30, heads=9, kv_heads=3, head_dim=64, experts=0, top_k=1, ffn=1536, vocab=49152,
        qk_norm=False,
    )  # fmt: skip
    plain = act.activations(arch, batch=8, seq=128, s=2, lora_rank_sum=64, attn="sdpa", experts_impl="eager")
    chunked_arch = act.Arch(**{**arch.__dict__, "chunked_head": True})
    chunked = act.activations(chunked_arch, batch=8, seq=128, s=2, lora_rank_sum=64, attn="sdpa", experts_impl="eager")
    assert plain.loss_peak == 1024 * (49152 * 14 + 16)
    assert chunked.loss_peak == 1024 * (2 * 576 + 16) + head_loss.CHUNK_TOKENS * 49152 * 8
    distilled = act.activations(
        chunked_arch, batch=8, seq=128, s=2, lora_rank_sum=64, attn="sdpa", experts_impl="eager", distilled=True
    )
    assert distilled.loss_peak == 1024 * (2 * 2 * 576 + 16) + head_loss.CHUNK_TOKENS * 49152 * 16
    assert distilled.full - chunked.full == distilled.loss_peak - chunked.loss_peak
    assert act.arch(_llama().config, []).chunked_head
    assert not act.arch(_micro_minimax(output_router_logits=True).config, []).chunked_head


# --------------------------------------------------------------------------- distilled replay


def _teacher_of(model, name="domain"):
    head = head_loss.head_of(model)

    def teacher(ids, mask):
        with adapters.state.without(model, name):
            return head_loss.decoder_hidden(head, ids, mask)

    return head, teacher


@pytest.mark.parametrize("chunk", [4, 1000], ids=["uneven-chunks", "one-chunk"])
def test_distilled_rows_take_the_kl_the_whole_logits_give_with_its_gradients(chunk, random_adapter, monkeypatch):
    """Replay rows count KL(base || adapted) per token, text rows their cross-entropy, over one denominator:
    the chunked loss and its LoRA gradients equal the same loss on the whole batch's logits."""
    model = _with_lora(_micro_minimax(), random_adapter)
    ids, labels = _batch(model.config.vocab_size)
    replay = torch.tensor([1, 0, 1])
    head, teacher = _teacher_of(model)
    model.train()
    with torch.no_grad(), adapters.state.without(model, "domain"):
        teacher_logits = model(input_ids=ids).logits
    assert adapters.active_adapters(model) == ["domain"]  # restored after the block
    want_loss = head_loss.logits_batch_loss(model(input_ids=ids).logits, teacher_logits, labels, replay, num_items=40)
    want_loss.backward()
    want = _lora_grads(model)
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(head_loss, "CHUNK_TOKENS", chunk)
    batch = {"input_ids": ids, "labels": labels, "replay": replay}
    hidden = head_loss.decoder_hidden(head, ids)
    got_loss = head_loss.causal_lm_kl(
        head, hidden[[0, 2]], teacher(ids[[0, 2]], None), labels[[0, 2]], num_items=40, chunk=chunk
    ) + head_loss.causal_lm_loss(head, hidden[[1]], labels[[1]], num_items=40, chunk=chunk)
    assert float(got_loss) == pytest.approx(float(head_loss.batch_loss(head, batch, num_items=40, teacher=teacher)))
    got_loss.backward()
    got = _lora_grads(model)
    assert float(got_loss) == pytest.approx(float(want_loss), rel=1e-5)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-7, msg=name)
    # Against the text-only loss the replay rows changed what the loss is: KL, not their tokens' NLL.
    text_only = head_loss.logits_batch_loss(model(input_ids=ids).logits, None, labels, None, num_items=40)
    assert abs(float(text_only) - float(want_loss)) > 0.1


def test_a_replay_weight_scales_the_distilled_rows_only(random_adapter):
    """Rows 0 and 2 replayed at weight w, row 1 text: loss(w) = CE(row 1) / 40 + w * KL(rows 0, 2) / 40."""
    model = _with_lora(_llama(), random_adapter)
    ids, labels = _batch(model.config.vocab_size)
    head, teacher = _teacher_of(model)

    def loss(w):
        batch = {"input_ids": ids, "labels": labels, "replay": torch.tensor([w, 0.0, w])}
        return float(head_loss.batch_loss(head, batch, num_items=40, teacher=teacher))

    with torch.no_grad():
        text_row = float(
            head_loss.causal_lm_loss(head, head_loss.decoder_hidden(head, ids[[1]]), labels[[1]], num_items=40)
        )
        kl = loss(1.0) - text_row
        assert kl > 1e-3
        assert loss(3.0) == pytest.approx(text_row + 3 * kl, rel=1e-5)
        assert loss(0.5) == pytest.approx(text_row + 0.5 * kl, rel=1e-5)


def test_distilled_replay_of_the_base_from_the_base_is_zero_with_zero_gradient(random_adapter):
    """A fresh LoRA adapter (B = 0) computes the base exactly: the KL and its gradient are zero."""
    model = adapters.add_adapter(_llama(), "domain", adapters_lora(), seed=0)
    adapters.activate(model, ["domain"], trainable="domain")
    ids, labels = _batch(model.config.vocab_size)
    head, teacher = _teacher_of(model)
    loss = head_loss.batch_loss(head, {"input_ids": ids, "labels": labels, "replay": torch.ones(3)}, teacher=teacher)
    loss.backward()
    assert abs(float(loss)) < 1e-6
    assert all(float(g.abs().max()) == 0.0 for g in _lora_grads(model).values())


def adapters_lora():
    from modft_utils import modeling

    return modeling.lora_config(LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))


def _replay_blocks(vocab, flags):
    from datasets import Dataset

    ids, _ = _batch(vocab, pad_tail=False)
    rows = [{"input_ids": r, "labels": r, "replay": f} for r, f in zip(ids.tolist(), flags, strict=True)]
    return Dataset.from_list(rows * 2)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked-head", "whole-logits"])
def test_training_on_distilled_replay_keeps_the_frozen_adapters_and_trains_the_one(
    tmp_path, random_adapter, monkeypatch, chunked
):
    """The teacher is the stack below the adapter in training (here base + a frozen adapter), switched in
    and out each step without touching trainability: the frozen adapter stays bit-identical."""
    if not chunked:
        monkeypatch.setattr(head_loss, "head_of", lambda m, **k: None)
    model = random_adapter(_llama(), "frozen", LoraSpec(r=2, alpha=4, dropout=0.0, target_modules=["o_proj"]), 7)
    model = adapters.add_adapter(model, "domain", adapters_lora(), seed=0)
    adapters.activate(model, ["frozen", "domain"], trainable="domain")
    before = adapters.fingerprint(adapters.adapter_state(model, "domain"))
    result = _train(tmp_path, model, _replay_blocks(model.config.vocab_size, [0, 1, 0]))
    assert result.frozen_unchanged == {"frozen": True}
    assert result.loss_path == (
        "chunked head" if chunked else "model (the architecture or head is not a plain frozen linear head)"
    )
    assert adapters.fingerprint(adapters.adapter_state(model, "domain")) != before
    assert adapters.active_adapters(model) == ["frozen", "domain"]
