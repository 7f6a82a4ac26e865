"""The five notebooks end to end through papermill on the default profile, into a temporary run folder."""

import json
import subprocess
import sys

import pytest

REQUIRED = [
    "data.dapt_train_tokens",
    "data.sft_train_examples",
    "data.pii_replacements",
    "data.tokens_per_word",
    "dapt.ppl_base",
    "dapt.ppl_domain",
    "sft.em_domain",
    "sft.f1_domain",
    "sft.em_stack",
    "sft.f1_stack",
    "sft.answer_nll_domain",
    "sft.answer_nll_stack",
    "sft.domain_adapter_unchanged",
    "compose.switch_ms",
    "rollback.max_abs_logit_diff_task_off",
    "rollback.max_abs_logit_diff_all_off",
]


@pytest.mark.slow
def test_every_metric_is_recorded(pipeline):
    missing = [k for k in REQUIRED if k not in pipeline.metrics]
    assert not missing
    on_disk = json.loads((pipeline.run_dir / "metrics.json").read_text())
    assert on_disk == pipeline.metrics


# The tiny profile's losses and perplexities as of 2026-12-03 (100 DAPT and 150 SFT steps), pinned so a
# change that alters the numbers is seen here (seeded CPU runs in fp32; the tiny base is the one
# `make test` builds). They are pinned per torch thread count: the threads decide the order in which
# sums are taken, and 100 training steps carry that rounding into the losses (measured on the same
# machine and base: DAPT train loss 7.0944 with 1 thread, 7.0822 with 2; held-out perplexity 494.3 vs
# 487.0). rel=1e-3 is room for another CPU's kernels at the same thread count.
# A change meant to move them updates them here, saying why in its commit. (2026-12-07: the SFT values
# moved when the Trainer's evaluation loop went: each DataLoader it started drew a number from torch's
# global generator, so the held-out evaluations at steps 50 and 100 changed the next epoch's shuffle.
# Later that day every value moved, the bare base's perplexity too (129,050 -> 149,692), which no
# code change of that day touches: most likely the tiny base `make test` builds came out different
# after a fresh install resolved transformers 5.25.0, peft 0.22.0 and accelerate 1.16.0. The SFT values also carry
# that day's SFT change, the LM head on answer positions only.)
PINNED = {
    1: {
        "dapt.train_loss": 6.8941526,
        "dapt.final_eval_loss": 6.0491602,
        "dapt.ppl_base": 149691.6,
        "dapt.ppl_domain": 423.75699,
        "sft.train_loss": 5.9699465,
        "sft.answer_nll_domain": 7.6837064,
        "sft.answer_nll_stack": 5.6714351,
        "rollback.candidate_answer_nll": 6.3610485,
    },
    2: {
        "dapt.train_loss": 6.8941452,
        "dapt.final_eval_loss": 6.0490648,
        "dapt.ppl_base": 149691.6,
        "dapt.ppl_domain": 423.71657,
        "sft.train_loss": 5.9665756,
        "sft.answer_nll_domain": 7.6835845,
        "sft.answer_nll_stack": 5.6703712,
        "rollback.candidate_answer_nll": 6.3624691,
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(PINNED[1]))
def test_tiny_profile_numbers_are_pinned(pipeline, key):
    threads = pipeline.metrics["dapt.threads"]
    assert pipeline.metrics["sft.threads"] == threads  # one thread count for the whole chain
    if threads not in PINNED:
        pytest.skip(f"the chain ran with {threads} torch threads; its numbers are pinned for {sorted(PINNED)}")
    assert pipeline.metrics[key] == pytest.approx(PINNED[threads][key], rel=1e-3)


@pytest.mark.slow
def test_outputs_are_in_the_run_folder(pipeline):
    run = pipeline.run_dir  # executed notebooks in run/notebooks: test_real_weights (modft run writes them)
    for name in ("domain", "task"):
        adapter = run / "adapters" / name / "adapter"
        assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
        assert not list(adapter.glob("*.bin"))
    assert (run / "figures" / "dapt_loss.png").is_file() and (run / "figures" / "compose_grid.png").is_file()


@pytest.mark.slow
def test_knowledge_probe_is_split_by_entity_and_its_exposures_counted(pipeline):
    """The sample probe: 30 train pilots join SFT closed-book, 30 probe pilots are asked in 04, and 02 counts
    each probe fact in every block DAPT trained on (max_steps x batch_size blocks)."""
    m = pipeline.metrics
    assert m["data.knowledge.train_entities"] == m["data.knowledge.probe_entities"] == 30
    assert m["data.sft.squad.closed_book_train_examples"] == m["data.knowledge.train_questions"] == 240
    assert m["data.closed_book_questions"] == min(64, m["data.knowledge.probe_questions"])
    assert m["dapt.knowledge_exposures.facts"] == m["data.knowledge.probe_questions"] == 120
    assert m["dapt.knowledge_exposures.blocks"] == m["dapt.steps"] * 16
    assert 0 < m["dapt.knowledge_exposures.facts_seen"] <= 120
    assert (
        m["dapt.knowledge_exposures.min"] <= m["dapt.knowledge_exposures.median"] <= m["dapt.knowledge_exposures.max"]
    )


@pytest.mark.slow
def test_data_numbers(pipeline):
    m = pipeline.metrics
    assert m["data.sft_train_examples"] >= 990  # the 1,000-example subset, less answers dropped for PII
    assert m["data.dapt_train_tokens"] > 100_000
    assert m["data.pii_replacements"] > 0
    assert 1.0 < m["data.tokens_per_word"] < 5.0


@pytest.mark.slow
def test_tokenizer_extension_runs_through_every_notebook(pipeline):
    """The tiny profile's decision is to extend: 01 adds tokens, 02's domain adapter trains their rows."""
    from safetensors import safe_open

    from modft_utils import modeling, runs

    m = pipeline.metrics
    assert m["data.tokenizer.extend"] is True
    ext = modeling.load_decision(runs.folder(pipeline.run_dir).vocab_extension)
    assert m["data.tokenizer.added_tokens"] == len(ext.words) == 100  # the profile's tokenizer_max_new_tokens
    assert m["data.tokenizer.tokens_per_word_extended"] < m["data.tokens_per_word"] - 0.2
    domain = pipeline.run_dir / "adapters" / "domain" / "adapter" / "adapter_model.safetensors"
    with safe_open(str(domain), framework="pt") as fh:
        rows = {k: fh.get_slice(k).get_shape() for k in fh.keys() if "trainable_tokens_delta" in k}
    assert sorted(k.split(".")[-3] for k in rows) == ["embed_tokens", "lm_head"]
    assert all(shape[0] == 100 for shape in rows.values())
    task = pipeline.run_dir / "adapters" / "task" / "adapter" / "adapter_model.safetensors"
    with safe_open(str(task), framework="pt") as fh:
        assert not [k for k in fh.keys() if "trainable_tokens" in k or "embed" in k]


@pytest.mark.slow
def test_adapters_help_where_they_should(pipeline):
    m = pipeline.metrics
    assert m["dapt.ppl_domain"] < m["dapt.ppl_base"]
    assert m["sft.answer_nll_stack"] < m["sft.answer_nll_domain"]
    assert 0.0 <= m["sft.f1_stack"] <= 100.0 and 0.0 <= m["sft.em_stack"] <= m["sft.f1_stack"] + 1e-9
    assert m["sft.domain_adapter_unchanged"] is True


@pytest.mark.slow
def test_experts_are_really_4bit(pipeline):
    m = pipeline.metrics
    assert m["dapt.quantizable_bytes_4bit"] <= 0.30 * m["dapt.quantizable_bytes_bf16"]
    assert m["dapt.footprint_4bit_bytes"] < m["dapt.footprint_bf16_bytes"]


@pytest.mark.slow
def test_rollback_drill(pipeline):
    m = pipeline.metrics
    assert m["rollback.gate_allowed"] is False  # the shuffled-answer candidate is refused
    assert m["rollback.gate_drop"] > 0
    assert m["rollback.max_abs_logit_diff_after_rollback"] == 0.0
    # publishes v1, v2 (candidate), v3 (on the newer domain); promote, candidate alias, forced
    # promote, rollback; promote v3, rollback after the domain rollback
    assert m["rollback.task_audit_events"] == 9
    assert m["rollback.domain_rollback_flags_task"] is True
    assert m["rollback.max_abs_logit_diff_after_domain_rollback"] == 0.0


@pytest.mark.slow
def test_exports_report_their_parity(pipeline):
    m = pipeline.metrics
    assert m["compose.export_combined_max_abs_diff"] < 1e-4  # one adapter equal to the stack (float order only)
    assert m["compose.export_merged_max_abs_diff"] > m["compose.export_combined_max_abs_diff"]  # 4-bit vs bf16 merge


@pytest.mark.slow
def test_rollback_invariants_are_exact(pipeline):
    m = pipeline.metrics
    assert m["rollback.max_abs_logit_diff_task_off"] == 0.0
    assert m["rollback.max_abs_logit_diff_all_off"] == 0.0
    # Recorded for people; how it compares with a reload is the benchmark's stack-switch row, and that
    # switching is flags only (no tensor moves, no reload) is test_stack's test_switching_is_flags_only.
    assert m["compose.switch_ms"] > 0


def test_bad_profile_fails_before_any_notebook(root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (root / "params" / "tiny.yaml").read_text().replace("block_size: 128", "block_size: 128\n  blok_size: 5")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "modft_utils.cli", "run", "--profile", str(bad), "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "data.blok_size: unknown key" in proc.stderr
    assert not (tmp_path / "run" / "notebooks").exists()


def test_malformed_data_file_is_named_before_any_notebook(root, tmp_path, isolated_args):
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"text": "fine"}\n{not json\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "modft_utils.cli",
            "run",
            "--profile",
            str(root / "params" / "tiny.yaml"),
            "--run-dir",
            str(tmp_path / "run"),
            *isolated_args,
            "--set",
            f"data.dapt.train_file={junk}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert f"{junk}, line 2: not valid JSON" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_failed_notebook_is_named_and_kept(root, tmp_path, isolated_args):
    # 02 in a run folder where 01 never ran: it fails inside the kernel, naming what is missing.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "modft_utils.cli",
            "run",
            "--profile",
            str(root / "params" / "tiny.yaml"),
            "--run-dir",
            str(tmp_path / "run"),
            *isolated_args,
            "--notebooks",
            "02",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    assert "notebook 02_dapt failed" in proc.stderr
    assert "run notebook 01_data_prep" in proc.stderr
    executed = tmp_path / "run" / "notebooks" / "02_dapt.ipynb"
    assert executed.is_file() and "DataError" in executed.read_text()
