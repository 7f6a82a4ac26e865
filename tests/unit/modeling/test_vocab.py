"""Tokenizer extension: the chosen words, the new rows, the adapter that trains them, and the stack around it."""

import json

import pytest
import torch

from modft_utils import adapters, evaluate, modeling, runs, serve, store
from modft_utils.adapters import load_adapter
from modft_utils.data import coverage

DOCS = [
    "The Thaenen council met at Maszaer. The Thaenen fishers sailed from Maszaer to the Thaenen Isles. " * 3,
    "Maszaer fishers built boats; the council of Maszaer counted the Thaenen dialect as its own. " * 3,
]


@pytest.fixture(scope="module")
def extension(tiny):
    base = tiny.base
    tok = modeling.load_tokenizer(base)
    return modeling.choose_words(tok, coverage.word_counts(DOCS), max_words=3, min_count=3, min_pieces=3)


def test_words_are_chosen_by_tokens_saved(tiny, extension):
    base = tiny.base
    tok = modeling.load_tokenizer(base)
    counts = coverage.word_counts(DOCS)
    saved = {w: (len(tok(" " + w, add_special_tokens=False)["input_ids"]) - 1) * c for w, c in counts.items() if c >= 3}
    assert len(extension.words) == 3
    assert [saved[w] for w in extension.words] == sorted((saved[w] for w in extension.words), reverse=True)
    assert min(saved[w] for w in extension.words) >= max(v for w, v in saved.items() if w not in extension.words)
    assert extension.token_ids == list(range(len(tok), len(tok) + 3))


def test_extended_tokenizer_makes_each_word_one_token_and_round_trips(tiny, extension):
    base = tiny.base
    plain, extended = modeling.load_tokenizer(base), modeling.load_tokenizer(base.extended(extension))
    for word, token_id in zip(extension.words, extension.token_ids):
        assert extended(" " + word, add_special_tokens=False)["input_ids"] == [token_id]
    for doc in DOCS:
        ids = extended(doc, add_special_tokens=False)["input_ids"]
        assert extended.decode(ids) == doc
        assert len(ids) < len(plain(doc, add_special_tokens=False)["input_ids"])


def test_extension_refuses_another_tokenizer(tiny, extension):
    base = tiny.base
    other = modeling.VocabExtension(extension.base_tokenizer_size + 7, extension.words, extension.pieces)
    with pytest.raises(modeling.VocabError, match=f"{extension.base_tokenizer_size + 7} tokens"):
        modeling.load_tokenizer(base.extended(other))


def test_tampered_extension_file_is_refused(tmp_path, extension):
    path = extension.save(tmp_path / "x.json")
    raw = json.loads(path.read_text())
    raw["words"][0] = "Other"
    path.write_text(json.dumps(raw))
    with pytest.raises(modeling.VocabError, match="x.json"):
        modeling.VocabExtension.load(path)


def test_new_rows_are_the_mean_of_the_old_pieces_and_change_the_base_identity(tiny, extension):
    prof, base = tiny.profile, tiny.base
    plain = modeling.load_base(prof, base)
    model = modeling.load_base(prof, base.extended(extension))
    rows_needed = extension.base_tokenizer_size + len(extension.words)
    assert model.get_input_embeddings().weight.shape[0] == max(
        rows_needed, plain.get_input_embeddings().weight.shape[0]
    )
    for get in ("get_input_embeddings", "get_output_embeddings"):
        old, new = getattr(plain, get)().weight, getattr(model, get)().weight
        for token_id, pieces in zip(extension.token_ids, extension.pieces):
            assert torch.equal(new[token_id], old[list(pieces)].mean(dim=0))
        assert torch.equal(new[: old.shape[0]][: extension.base_tokenizer_size], old[: extension.base_tokenizer_size])
    ident = lambda m: store.base_identity(m, model_id="tiny")  # noqa: E731
    assert ident(model).config_sha256 != ident(plain).config_sha256
    assert ident(model) == ident(modeling.load_base(prof, base.extended(extension)))


def test_domain_adapter_trains_the_new_rows_and_the_stack_stays_exact(tiny, extension, tmp_path, random_adapter):
    prof, base = tiny.profile, tiny.base
    xbase = base.extended(extension)
    tok = modeling.load_tokenizer(xbase)
    model = modeling.load_base(prof, xbase)
    model = adapters.add_adapter(model, "domain", modeling.domain_lora_config(prof, xbase, model))
    adapters.activate(model, ["domain"], trainable="domain")
    ids = torch.tensor([tok(DOCS[0], add_special_tokens=False)["input_ids"][:64]])
    initial = {k: v for k, v in adapters.adapter_state(model, "domain").items() if "trainable_tokens_delta" in k}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    rows = {k: v for k, v in adapters.adapter_state(model, "domain").items() if "trainable_tokens_delta" in k}
    assert len(rows) == 2 and all(v.shape[0] == 3 for v in rows.values())  # input embedding and LM head
    assert all(not torch.equal(rows[k], initial[k]) for k in rows)  # the rows trained
    adapters.save_adapter(model, "domain", tmp_path / "domain")
    model = random_adapter(model, "task", prof.sft.lora, seed=3)
    adapters.save_adapter(model, "task", tmp_path / "task")  # an adapter without rows, beside one with them

    adapters.activate(model, ["domain"])
    domain_only = evaluate.logits(model, ids)
    adapters.activate(model, ["domain", "task"])
    stack = evaluate.logits(model, ids)
    adapters.activate(model, [])
    assert (
        evaluate.max_abs_diff(evaluate.logits(model, ids), evaluate.logits(modeling.load_base(prof, xbase), ids)) == 0.0
    )

    fresh = load_adapter(modeling.load_base(prof, xbase), tmp_path / "domain", "domain")
    fresh = load_adapter(fresh, tmp_path / "task", "task")
    adapters.activate(fresh, ["domain"])
    assert evaluate.max_abs_diff(evaluate.logits(fresh, ids), domain_only) == 0.0
    adapters.activate(fresh, ["domain", "task"])
    assert evaluate.max_abs_diff(evaluate.logits(fresh, ids), stack) == 0.0

    combined = serve.export_combined(fresh, ["task", "domain"], tmp_path / "stack")
    one = load_adapter(modeling.load_base(prof, xbase), combined, "stack")
    adapters.activate(one, ["stack"])
    assert evaluate.max_abs_diff(evaluate.logits(one, ids), stack) < 1e-4
    merged = serve.export_merged(
        serve.full_precision_loader(prof, xbase),
        {"domain": tmp_path / "domain", "task": tmp_path / "task"},
        tmp_path / "merged",
        dtype=None,
        tokenizer=tok,
    )
    merged_model = modeling.load_merged(merged, prof)
    assert merged_model.get_input_embeddings().weight.shape[0] == model.get_input_embeddings().weight.shape[0]


def test_decision_below_threshold_adds_nothing_and_removes_a_stale_extension(tiny, extension, tmp_path):
    prof, base = tiny.profile, tiny.base
    modeling.save_decision(runs.folder(tmp_path).vocab_extension, extension)
    strict = prof.model_copy(update={"data": prof.data.model_copy(update={"tokenizer_extend_threshold": 50.0})})
    decision = coverage.decide_tokenizer(strict, base, DOCS, tmp_path)
    assert decision.extension is None and decision.coverage["extend"] is False
    assert modeling.load_decision(runs.folder(tmp_path).vocab_extension) is None
    assert decision.metrics()["data.tokenizer.added_tokens"] == 0


def test_decision_above_threshold_is_found_by_later_loads(tiny, tmp_path):
    prof, base = tiny.profile, tiny.base
    eager = prof.model_copy(
        update={
            "data": prof.data.model_copy(
                update={"tokenizer_extend_threshold": 1.0, "tokenizer_min_word_count": 3, "tokenizer_max_new_tokens": 2}
            )
        }
    )
    decision = coverage.decide_tokenizer(eager, base, DOCS, tmp_path)
    assert len(decision.extension.words) == 2
    assert decision.coverage_extended["tokens_per_word"] < decision.coverage["tokens_per_word"]
    later = modeling.ensure_base(prof, modeling.load_decision(runs.folder(tmp_path).vocab_extension), progress=False)
    assert later.vocab_extension == decision.extension
    assert len(modeling.load_tokenizer(later)) == decision.extension.base_tokenizer_size + 2
