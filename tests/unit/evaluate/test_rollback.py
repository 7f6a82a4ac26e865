"""The rollback drills of notebook 05 (modft_utils.evaluate.rollback) on the micro base: each invariant
checked as a number, each store operation in the alias and the audit log."""

import json
from dataclasses import asdict, replace

import pytest
import torch
from datasets import Dataset

from modft_utils import adapters, data, evaluate, modeling, runs
from modft_utils.adapters import AdapterError, AdapterStack
from modft_utils.config import LoraSpec
from modft_utils.data.sft import SftData, SftReport
from modft_utils.evaluate import RecordedGrid, rollback
from modft_utils.modeling import BaseRef
from modft_utils.store import registry

X = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(0))
DOMAIN, TASK = LoraSpec(r=4, alpha=8), LoraSpec(r=2, alpha=4)


@pytest.fixture(scope="module")
def profile(micro_profile):
    """The micro profile with drill runs of 3 steps."""
    return micro_profile.model_copy(
        update={"rollback": micro_profile.rollback.model_copy(update={"candidate_steps": 3, "probe_examples": 2})}
    )


@pytest.fixture(scope="module")
def tok(micro_tokenizer):
    return micro_tokenizer


def _base(profile):
    return modeling.load_base(profile, BaseRef(profile.model.id))  # 4-bit, as the workbook runs it


def _sft(tok, n: int, seed: int, *, shuffle: bool = False) -> SftData:
    """Questions of a few words whose answer is the word after the last one; shuffled: wrong answers."""
    g = torch.Generator().manual_seed(seed)
    examples, rows = [], []
    answers = [int(a) for a in torch.randint(3, 96, (n,), generator=g)]
    if shuffle:
        answers = answers[1:] + answers[:1]
    for i, answer in enumerate(answers):
        prompt = " ".join(f"w{int(w)}" for w in torch.randint(3, 96, (5,), generator=g))
        examples.append({"id": str(i), "prompt": prompt, "answers": [f"w{answer}"], "format": "squad"})
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(f"w{answer}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append({"input_ids": p + a, "labels": [-100] * len(p) + a, "attention_mask": [1] * (len(p) + len(a))})
    ds = Dataset.from_list(rows)
    return SftData(ds, ds, examples, SftReport())


@pytest.fixture
def published(profile, tmp_path, random_adapter):
    """A run folder whose domain and task adapters (random, non-zero) are published as domain@1 and
    task@1 (on domain@1), as notebooks 02 and 03 leave them; nothing promoted yet. Fresh for each
    test: the drills move aliases and publish."""
    model = modeling.load_base(profile, BaseRef(profile.model.id), load_in_4bit=False)
    identity = registry.base_identity(model, model_id=profile.model.id)
    run = runs.Run(tmp_path / "run", profile, BaseRef(profile.model.id), None, [])
    store = registry.Registry(tmp_path / "registry")
    model = random_adapter(model, "domain", DOMAIN, 1)
    model = random_adapter(model, "task", TASK, 2)
    for name, parent in (("domain", None), ("task", "domain@1")):
        adapters.save_adapter(model, name, run.adapter(name))
        run.publish(store, name, base=identity, parent=parent, params={}, data_fingerprint="", metrics={})
    return run, store


def _live(profile, store):
    """Base + domain@production + task@production from the store, checked, both active; and the base identity."""
    model = _base(profile)
    identity = registry.base_identity(model, model_id=profile.model.id)
    model = adapters.load_adapter(model, store.resolve("domain@production"), "domain", base=identity)
    model = adapters.load_adapter(
        model, store.resolve("task@production"), "task", base=identity, active_parent=store.get("domain", 1).ref
    )
    adapters.activate(model, ["domain", "task"])
    return model, identity


def _promote_first(store):
    store.promote("domain", 1, reason="test")
    store.promote("task", 1, reason="test")


def _grid(domain_ppl: float, generic_ppl: float) -> RecordedGrid:
    """Notebook 04's rows for the base (domain 10, generic 5) and base + domain."""
    return RecordedGrid(
        8,
        {
            "base": {"domain_ppl": 10.0, "generic_ppl": 5.0},
            "base+domain": {"domain_ppl": domain_ppl, "generic_ppl": generic_ppl},
        },
    )


def test_promote_published_points_production_at_what_the_run_published(published, profile):
    run, store = published
    before = len(store.audit("task"))
    promotion = rollback.promote_published(run, store, _grid(8.0, 5.2))  # generic +4%: within 5%
    assert (promotion.domain.ref, promotion.task.ref) == (store.get("domain", 1).ref, store.get("task", 1).ref)
    assert promotion.gate["allowed"] and not promotion.forced
    assert [c["check"] for c in promotion.gate["checks"]] == [
        "domain perplexity improves on the base's",
        "generic perplexity within 5% of the base's",
    ]
    assert store.aliases("domain")["production"] == 1 and store.aliases("task")["production"] == 1
    last = store.audit("task")[-1]
    assert len(store.audit("task")) == before + 1 and last["reason"] == f"SFT of run {run.name}"
    assert store.audit("domain")[-1]["reason"] == f"DAPT of run {run.name}"


@pytest.mark.parametrize(
    "domain_ppl, generic_ppl, refused",
    [
        (8.0, 5.3, "generic perplexity within 5% of the base's"),  # +6%
        (10.0, 5.0, "domain perplexity improves on the base's"),  # no better than the base
    ],
)
def test_a_refused_first_domain_version_moves_no_alias(published, domain_ppl, generic_ppl, refused):
    run, store = published
    with pytest.raises(rollback.DomainGateRefused, match="rollback.force_first_domain") as err:
        rollback.promote_published(run, store, _grid(domain_ppl, generic_ppl))
    assert str(store.get("domain", 1).ref) in str(err.value) and f"FAIL  {refused}" in str(err.value)
    assert "production" not in store.aliases("domain") and "production" not in store.aliases("task")


def test_force_first_domain_promotes_a_refused_version_and_says_so(published, profile):
    run, store = published
    forcing = profile.model_copy(update={"rollback": profile.rollback.model_copy(update={"force_first_domain": True})})
    run = replace(run, profile=forcing)
    promotion = rollback.promote_published(run, store, _grid(8.0, 50.0))
    assert promotion.forced and not promotion.gate["allowed"]
    assert store.aliases("domain")["production"] == 1 and store.aliases("task")["production"] == 1
    reason = store.audit("domain")[-1]["reason"]
    assert reason == f"DAPT of run {run.name}; forced past the domain gate: generic perplexity within 5% of the base's"


def test_promotion_without_notebook_04s_grid_names_it(published):
    run, store = published
    with pytest.raises(AdapterError, match="notebook 04"):
        rollback.promote_published(run, store, None)
    with pytest.raises(AdapterError, match="notebook 04"):
        rollback.promote_published(run, store, RecordedGrid(8, {"base": {"domain_ppl": 1.0}}))
    assert "production" not in store.aliases("domain")


def test_task_off_and_all_off_equal_a_separately_loaded_base(published, profile):
    _, store = published
    _promote_first(store)
    model, identity = _live(profile, store)
    full = evaluate.logits(model, X)
    served = AdapterStack(_base(profile), store, identity)
    references = rollback.reference_logits(served, X)
    assert set(references) == {"base", "base + domain"} and served.active == ["domain@1"]

    switch_ms, task_off = rollback.switch_and_compare(model, ["domain"], X, references["base + domain"])
    assert task_off == 0.0 and switch_ms >= 0 and adapters.active_adapters(model) == ["domain"]
    _, all_off = rollback.switch_and_compare(model, [], X, references["base"])
    assert all_off == 0.0 and adapters.active_adapters(model) == []
    # Not trivially equal: each adapter changes the logits.
    assert evaluate.max_abs_diff(full, references["base + domain"]) > 0.0
    assert evaluate.max_abs_diff(references["base + domain"], references["base"]) > 0.0
    with pytest.raises(adapters.AdapterError, match="freshly loaded base"):
        rollback.reference_logits(served, X)  # it holds domain_v1 now


def test_candidate_trains_over_a_frozen_domain_and_meets_the_gate(published, profile, tok, tmp_path):
    _, store = published
    _promote_first(store)
    model, identity = _live(profile, store)
    frozen = {n: adapters.fingerprint(adapters.adapter_state(model, n)) for n in ("domain", "task")}
    bad, held_out = _sft(tok, 12, seed=1, shuffle=True), _sft(tok, 6, seed=2)
    candidate = rollback.train_candidate(
        model,
        profile,
        bad.train,
        data.sft_collator(tok),
        tmp_path / "candidate",
        modeling.lora_config(TASK),
    )
    assert candidate.result.steps == profile.rollback.candidate_steps == candidate.spec.max_steps
    assert candidate.examples == 12 and candidate.data_fingerprint == data.fingerprint_dataset(bad.train)
    assert candidate.result.frozen_unchanged == {"domain": True, "task": True}
    assert candidate.result.final_eval_loss is None  # the gate scores it; training does not evaluate
    assert {n: adapters.fingerprint(adapters.adapter_state(model, n)) for n in frozen} == frozen
    assert not any(p.requires_grad for p in model.parameters())  # nothing left trainable

    drill = rollback.gate_candidate(
        model, tok, store, candidate, held_out, profile, base=identity, parent=store.get("domain", 1).ref
    )
    adapters.activate(model, ["domain", "task"])
    production = evaluate.stack_scores(
        model,
        tok,
        held_out.eval_examples,
        held_out.eval_tokenized,
        data.sft_collator(tok),
        max_new_tokens=profile.sft.max_new_tokens,
    )
    adapters.activate(model, ["domain", "candidate"])
    assert drill.production == production and drill.candidate["answer_nll"] != production["answer_nll"]
    metric = profile.gate_metric()
    gate = drill.gate
    assert (gate["metric"], gate["candidate"], gate["production"]) == (
        metric,
        drill.candidate[metric],
        production[metric],
    )
    assert gate["allowed"] == (gate["drop"] <= profile.rollback.regression_tolerance)
    # Published as the next task version, on domain@1, under the candidate alias; production unmoved.
    assert drill.version.ref == store.get("task", 2).ref and drill.version.manifest.parent == store.get("domain", 1).ref
    assert store.aliases("task") == {"production": 1, "candidate": 2}
    assert drill.version.manifest.metrics == drill.candidate


def test_the_gates_take_what_the_grid_measured(published, profile, tok):
    """Notebook 04's grid rows are what the gates compute for the production stacks (the same calls on the
    same examples and blocks give the same numbers), so notebook 05 takes them from metrics.json; rows
    scored on other examples are not taken."""
    _, store = published
    _promote_first(store)
    model, _ = _live(profile, store)
    held_out = _sft(tok, 6, seed=2)
    blocks = Dataset.from_dict({"input_ids": X.tolist(), "labels": X.tolist()})
    collator, n = data.sft_collator(tok), len(held_out.eval_examples)
    rows = evaluate.comparison_grid(
        model,
        tok,
        stacks=evaluate.STACKS,
        eval_blocks=blocks,
        qa_examples=held_out.eval_examples,
        qa_tokenized=held_out.eval_tokenized,
        collator=collator,
        max_new_tokens=profile.sft.max_new_tokens,
    )
    grid = evaluate.recorded_grid({**evaluate.grid_metrics(rows), "compose.grid_qa_examples": n, "other.key": 1})
    adapters.activate(model, ["domain", "task"])
    computed = evaluate.stack_scores(
        model, tok, held_out.eval_examples, held_out.eval_tokenized, collator, max_new_tokens=profile.sft.max_new_tokens
    )
    assert grid.stack_scores(["domain", "task"], n) == computed
    assert grid.stack_scores(["domain", "task"], n - 1) is None
    for names in ([], ["domain"]):
        adapters.activate(model, names)
        assert grid.perplexities(names) == {"domain_ppl": evaluate.perplexity(model, blocks)}
    assert evaluate.recorded_grid({"compose.switch_ms": 0.1}) is None


def test_forced_candidate_rolled_back_restores_the_outputs_bit_for_bit(published, profile, random_adapter, tmp_path):
    _, store = published
    _promote_first(store)
    model, identity = _live(profile, store)
    before = evaluate.logits(model, X)
    bad = random_adapter(modeling.load_base(profile, BaseRef(profile.model.id), load_in_4bit=False), "bad", TASK, 7)
    domain = store.get("domain", 1)
    version = store.publish(
        "task",
        adapters.save_adapter(bad, "bad", tmp_path / "bad"),
        base=identity,
        parent=domain.ref,
        params={},
        data_fingerprint="",
        metrics={},
    )
    events = len(store.audit("task"))
    incident = rollback.force_and_roll_back(model, store, version, X, before, base=identity, parent=domain.ref)
    assert incident.forced == version.ref and incident.restored.ref == store.get("task", 1).ref
    assert incident.max_abs_diff == 0.0 and store.aliases("task")["production"] == 1
    assert adapters.active_adapters(model) == ["domain", "task_restored"]
    assert [e["event"] for e in store.audit("task")[events:]] == ["promote", "rollback"]


def _run_with_data(run, tok, profile):
    """What notebook 01 leaves in the run folder that the newer versions train on: DAPT blocks and the SFT sets."""
    g = torch.Generator().manual_seed(5)
    starts = torch.randint(0, 80, (16, 1), generator=g)
    ids = ((starts + torch.arange(16)) % 90 + 3).tolist()
    blocks = Dataset.from_dict({"input_ids": ids, "labels": ids, "attention_mask": [[1] * 16] * 16})
    blocks.save_to_disk(str(run.dapt_blocks("train")))
    blocks.select(range(4)).save_to_disk(str(run.dapt_blocks("eval")))
    sft = _sft(tok, 12, seed=3)
    sft.train.save_to_disk(str(run.sft_train))
    sft.eval_tokenized.save_to_disk(str(run.sft_eval_tokenized))
    run.sft_eval.write_text("".join(json.dumps(e) + "\n" for e in sft.eval_examples))
    run.sft_report.write_text(json.dumps(asdict(sft.report)))
    return runs.Run(run.dir, profile, run.base, tok, [])


def test_domain_rollback_flags_the_task_trained_on_it_until_it_follows(published, profile, tok):
    run, store = published
    _promote_first(store)
    run = _run_with_data(run, tok, profile)
    model, identity = _live(profile, store)
    before = evaluate.logits(model, X)
    frozen = {n: adapters.fingerprint(adapters.adapter_state(model, n)) for n in ("domain", "task")}

    domain2, task2 = rollback.train_newer_versions(
        model,
        run,
        store,
        domain_lora=modeling.lora_config(DOMAIN),
        task_lora=modeling.lora_config(TASK),
        base=identity,
    )
    assert (domain2.ref, task2.ref) == (store.get("domain", 2).ref, store.get("task", 2).ref)
    assert domain2.manifest.parent is None and task2.manifest.parent == domain2.ref
    assert domain2.manifest.params["seed"] == task2.manifest.params["seed"] == 1
    assert domain2.manifest.params["max_steps"] == profile.rollback.candidate_steps
    assert {n: adapters.fingerprint(adapters.adapter_state(model, n)) for n in frozen} == frozen
    assert store.aliases("domain")["production"] == 1  # published, not promoted

    store.promote("domain", 2, reason="test")
    store.promote("task", 2, reason="test")
    served = AdapterStack(_base(profile), store, identity)
    assert served.use("domain@production", "task@production") == ["domain_v2", "task_v2"]
    drill = rollback.roll_back_domain(served, store, X, before)
    assert drill.flagged and "task@2 was trained on domain@2, but the active domain is domain@1" in drill.refused
    assert drill.max_abs_diff == 0.0 and served.active == ["domain@1", "task@1"]
    assert store.aliases("domain")["production"] == store.aliases("task")["production"] == 1
    assert [e["reason"] for e in store.audit("domain")[-1:]] == ["drill: newer domain regressed"]


@pytest.mark.parametrize(
    ("candidate", "task", "refused"),
    [
        ({"domain_ppl": 9.0, "generic_ppl": 10.4}, {"f1": 50.0}, []),
        ({"domain_ppl": 10.0, "generic_ppl": 10.0}, {"f1": 50.0}, ["domain perplexity improves on the production's"]),
        ({"domain_ppl": 9.0, "generic_ppl": 10.6}, {"f1": 50.0}, ["generic perplexity within 5% of the base's"]),
        ({"domain_ppl": 9.0, "generic_ppl": 10.0}, {"f1": 48.9}, ["the task retrained on it loses at most 1 f1"]),
    ],
)
def test_the_domain_gate_refuses_for_each_reason_and_names_it(candidate, task, refused):
    production, base = {"domain_ppl": 10.0, "generic_ppl": 10.2}, {"domain_ppl": 12.0, "generic_ppl": 10.0}
    gate = evaluate.domain_gate(
        candidate,
        production,
        base,
        task_candidate=task,
        task_production={"f1": 50.0},
        metric="f1",
        task_tolerance=1.0,
        generic_tolerance=0.05,
    )
    assert gate["refused_because"] == refused and gate["allowed"] is (not refused)
    limit = next(c["limit"] for c in gate["checks"] if "generic" in c["check"])
    assert limit == pytest.approx(10.5)  # against the base, which never saw the domain
    assert ("REFUSED" in evaluate.gate_table(gate)) is bool(refused)


def test_generic_blocks_are_the_files_tail_packed_and_bad_rows_are_named(micro_profile, tok, tmp_path):
    path = tmp_path / "generic.jsonl"
    path.write_text(
        "".join(json.dumps({"text": " ".join(f"w{3 + (i + j) % 90}" for j in range(7))}) + "\n" for i in range(40))
    )
    profile = micro_profile.model_copy(
        update={"data": micro_profile.data.model_copy(update={"generic_eval_file": str(path), "block_size": 16})}
    )
    blocks = data.load_generic_blocks(profile, tok, 3)
    assert len(blocks) == 3 and all(len(b) == 16 for b in blocks["input_ids"])
    full = [t for line in path.read_text().splitlines() for t in (*tok(json.loads(line)["text"])["input_ids"], 1)]
    stream = [t for b in blocks["input_ids"] for t in b]
    starts = [i for i in range(len(full) - len(stream) + 1) if full[i : i + len(stream)] == stream]
    assert starts and len(full) - (starts[-1] + len(stream)) < 16  # the tail, less a partial block
    assert micro_profile.data.generic_eval_file is None
    assert data.load_generic_blocks(micro_profile, tok, 3) is None
    path.write_text('{"text": "w3 w4"}\n{"txt": 1}\n')
    with pytest.raises(data.DataError, match=r"data.generic_eval_file: .*generic.jsonl, line 2"):
        data.load_generic_blocks(profile, tok, 3)
