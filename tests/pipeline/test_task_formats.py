"""Instruction (prompt_response) and chat (messages) SFT sets: reading, checking, rendering, scoring.

The sets in data/sample/summaries (all five notebooks) and data/sample/chat (01-03) go through the
notebooks on the tiny profiles at a micro size; everything else here runs on a byte-level tokenizer built in the test.
"""

import json

import pytest
import yaml
from profile_tree import portable_tree

from modft_utils import config, data, evaluate, runs
from modft_utils.config import ProfileError
from modft_utils.data import prompts, sources, tasks
from modft_utils.evaluate import scores

TURNS = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"


@pytest.fixture(scope="module")
def byte_tokenizer():
    """A byte-level tokenizer with no merges: every byte one token, ``</s>`` the EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "</s>": 1, **{ch: i + 2 for i, ch in enumerate(sorted(alphabet))}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")


def _profile(tmp_path, root, sft: dict, *, extra: dict | None = None):
    """tiny.yaml with the SFT set replaced (files written by the test), validated like any profile."""
    tree = portable_tree(root, "tiny")
    if sft.get("format", "squad") != "squad":
        tree["data"]["knowledge_probe"] = None  # closed-book probe questions join SQuAD-format sets only
    tree["data"]["sft"] = sft
    tree["data"]["min_sft_examples"] = 2
    for key, value in (extra or {}).items():
        config._set_dotted(tree, key, value)
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(tree))
    return config.load_profile(path)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


ALPACA = [
    {
        "instruction": f"Summarize note {i}.",
        "input": f"Note {i} says the Quiet Star sailed in {1600 + i}.",
        "output": f"Quiet Star sailed {1600 + i}.",
    }
    for i in range(4)
]
CHATS = [
    {
        "id": f"c{i}",
        "messages": [
            {"role": "user", "content": f"Where is town {i}?"},
            {"role": "assistant", "content": f"On isle {i}."},
            {"role": "user", "content": "And its river?"},
            {"role": "assistant", "content": f"River {i}."},
        ],
    }
    for i in range(4)
]


# ---------------------------------------------------------------- reading and checking


def test_alpaca_rows_become_user_and_assistant_turns():
    conv = tasks.prompt_response_conversation(ALPACA[0], tasks.FieldMap(), "f, line 1")
    assert conv.messages == (
        ("user", "Summarize note 0.\n\nNote 0 says the Quiet Star sailed in 1600."),
        ("assistant", "Quiet Star sailed 1600."),
    )
    no_input = tasks.prompt_response_conversation(
        {"instruction": "Say hi.", "input": "", "output": "Hi."}, tasks.FieldMap(), "x"
    )
    assert no_input.messages[0] == ("user", "Say hi.")


def test_custom_field_names_are_mapped_without_conversion(tmp_path, root):
    rows = [{"q": r["instruction"], "a": r["output"], "sys": "Be brief."} for r in ALPACA]
    sft = {
        "format": "prompt_response",
        "train_file": _jsonl(tmp_path / "t.jsonl", rows),
        "validation_file": _jsonl(tmp_path / "v.jsonl", rows),
        "fields": {"prompt": "q", "response": "a", "input": None, "system": "sys"},
    }
    prof = _profile(tmp_path, root, sft)
    convs, report = data.load_conversations(prof, "train")
    assert report.as_dict() == {"rows_in": 4, "examples": 4, "duplicate_ids": 0, "duplicate_content": 0}
    assert convs[0].messages == (
        ("system", "Be brief."),
        ("user", "Summarize note 0."),
        ("assistant", "Quiet Star sailed 1600."),
    )


def test_a_mapped_field_missing_in_a_row_is_named_by_validate(tmp_path, root):
    rows = ALPACA[:2] + [{"instruction": "x", "input": ""}] + ALPACA[2:]
    sft = {
        "format": "prompt_response",
        "train_file": _jsonl(tmp_path / "t.jsonl", rows),
        "validation_file": _jsonl(tmp_path / "v.jsonl", ALPACA),
    }
    with pytest.raises(
        data.DataError,
        match=r"data\.sft\.train_file: .*t\.jsonl, line 3: missing field 'output' \(data\.sft\.fields\.response\)",
    ):
        data.validate_inputs(_profile(tmp_path, root, sft))


def test_sharegpt_turns_are_read_like_role_content():
    row = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Q"},
            {"from": "gpt", "value": "A"},
        ]
    }
    conv = tasks.messages_conversation(row, "conversations", "f, line 1")
    assert conv.messages == (("system", "S"), ("user", "Q"), ("assistant", "A"))


@pytest.mark.parametrize(
    "turns, message",
    [
        (
            [("user", "Q"), ("user", "Q2"), ("assistant", "A")],
            r"line 7, turn 1: roles must alternate .* found 'user' where 'assistant' belongs",
        ),
        ([("user", "Q")], r"line 7: the conversation has no assistant turn"),
        ([("user", "Q"), ("assistant", "A"), ("user", "Q2")], r"line 7: the conversation ends with a user turn"),
        ([("user", "Q"), ("assistant", "")], r"line 7, turn 1: empty assistant turn"),
        ([("user", "Q"), ("robot", "A")], r"line 7, turn 1: unknown role 'robot'"),
    ],
)
def test_bad_chat_rows_are_named_with_row_and_turn(turns, message):
    row = {"messages": [{"role": r, "content": c} for r, c in turns]}
    with pytest.raises(tasks.TaskFormatError, match=message):
        tasks.messages_conversation(row, "messages", "data.sft.train_file: chat.jsonl, line 7")


def test_duplicates_are_counted_and_a_collapsed_file_fails_validate_with_the_counts(tmp_path, root):
    rows = CHATS + [dict(CHATS[0]), {"id": "other", "messages": CHATS[1]["messages"]}]
    sft = {
        "format": "messages",
        "train_file": _jsonl(tmp_path / "t.jsonl", rows),
        "validation_file": _jsonl(tmp_path / "v.jsonl", CHATS),
    }
    prof = _profile(tmp_path, root, sft, extra={"sft.prompt_style": "chat", "sft.chat_template": TURNS})
    _, report = data.load_conversations(prof, "train")
    assert report.as_dict() == {"rows_in": 6, "examples": 4, "duplicate_ids": 1, "duplicate_content": 1}
    same = [dict(CHATS[0]) for _ in range(5)]
    sft["train_file"] = _jsonl(tmp_path / "t.jsonl", same)
    prof = _profile(tmp_path, root, sft, extra={"sft.prompt_style": "chat", "sft.chat_template": TURNS})
    with pytest.raises(
        data.DataError,
        match=r"leaves 1 usable example\(s\) \(5 row\(s\) read, 4 duplicate id\(s\).*data\.min_sft_examples",
    ):
        data.validate_inputs(prof)


def test_empty_file_fails_validate(tmp_path, root):
    sft = {
        "format": "prompt_response",
        "train_file": _jsonl(tmp_path / "t.jsonl", []),
        "validation_file": _jsonl(tmp_path / "v.jsonl", ALPACA),
    }
    with pytest.raises(
        data.DataError, match=r"data\.sft\.train_file: .*t\.jsonl leaves 0 usable example\(s\) \(0 row\(s\) read"
    ):
        data.validate_inputs(_profile(tmp_path, root, sft))


def test_csv_and_parquet_instruction_files_read_the_same_rows(tmp_path):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(tmp_path / "a.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["instruction", "input", "output"])
        w.writeheader()
        w.writerows(ALPACA)
    pq.write_table(pa.Table.from_pylist(ALPACA), tmp_path / "a.parquet")
    got = {}
    for name in ("a.csv", "a.parquet"):
        got[name], _ = tasks.read_conversations(
            tmp_path / name, "k", "prompt_response", fields=tasks.FieldMap(), messages_field="messages"
        )
    assert [c.messages for c in got["a.csv"]] == [c.messages for c in got["a.parquet"]]
    with pytest.raises(
        tasks.TaskFormatError, match=r"k: .*a\.csv, row 1: missing field 'answer' \(data\.sft\.fields\.response\)"
    ):
        tasks.read_conversations(
            tmp_path / "a.csv",
            "k",
            "prompt_response",
            fields=tasks.FieldMap(response="answer"),
            messages_field="messages",
        )


def test_unreadable_sources_are_named(tmp_path):
    kw = dict(fields=tasks.FieldMap(), messages_field="messages")
    with pytest.raises(tasks.TaskFormatError, match=r"k: .* is a folder"):
        tasks.read_conversations(tmp_path, "k", "messages", **kw)
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(tasks.TaskFormatError, match=r"no reader for '\.txt'"):
        tasks.read_conversations(tmp_path / "a.txt", "k", "messages", **kw)
    good = json.dumps(CHATS[0]) + "\n"
    (tmp_path / "b.jsonl").write_bytes((good * 3).encode() + b'{"id": "\xff"}\n')
    with pytest.raises(
        tasks.TaskFormatError, match=rf"line 4: not valid UTF-8 at byte {len(good.encode()) * 3 + 8} of the file"
    ):
        tasks.read_conversations(tmp_path / "b.jsonl", "k", "messages", **kw)
    (tmp_path / "c.jsonl").write_text(good + "{oops\n")
    with pytest.raises(tasks.TaskFormatError, match=r"c\.jsonl, line 2: not valid JSON"):
        tasks.read_conversations(tmp_path / "c.jsonl", "k", "messages", **kw)


def test_crlf_and_a_json_list_read_like_json_lines(tmp_path):
    kw = dict(fields=tasks.FieldMap(), messages_field="messages")
    (tmp_path / "a.jsonl").write_bytes("".join(json.dumps(r) + "\r\n" for r in CHATS).encode())
    (tmp_path / "b.json").write_text(json.dumps(CHATS, indent=1))
    a, _ = tasks.read_conversations(tmp_path / "a.jsonl", "k", "messages", **kw)
    b, _ = tasks.read_conversations(tmp_path / "b.json", "k", "messages", **kw)
    assert a == b and len(a) == 4


# ---------------------------------------------------------------- rendering and labels


def test_loss_is_on_assistant_tokens_only(byte_tokenizer):
    fmt = prompts.PromptFormat("chat", None, TURNS)
    conv = tasks.messages_conversation(CHATS[2], "messages", "x")
    row = tasks.tokenize_conversation(conv, byte_tokenizer, fmt, 1024)
    learned = [t for t, y in zip(row["input_ids"], row["labels"]) if y != -100]
    assert row["labels"] == [y if y == -100 else t for t, y in zip(row["input_ids"], row["labels"])]
    assert byte_tokenizer.decode(learned) == "On isle 2.</s>River 2.</s>"
    last = tasks.tokenize_conversation(conv, byte_tokenizer, fmt, 1024, labels="last")
    assert byte_tokenizer.decode([t for t, y in zip(last["input_ids"], last["labels"]) if y != -100]) == "River 2.</s>"
    assert last["input_ids"] == row["input_ids"]
    prompt = tasks.prompt_text(conv, byte_tokenizer, fmt)
    assert byte_tokenizer.decode(row["input_ids"]).startswith(prompt) and prompt.endswith("<|assistant|>")


def test_plain_prompt_response_and_a_system_prompt(byte_tokenizer):
    conv = tasks.prompt_response_conversation(ALPACA[1], tasks.FieldMap(), "x")
    row = tasks.tokenize_conversation(conv, byte_tokenizer, prompts.PromptFormat("plain"), 1024)
    assert (
        byte_tokenizer.decode([t for t, y in zip(row["input_ids"], row["labels"]) if y != -100])
        == " Quiet Star sailed 1601.</s>"
    )
    chat = tasks.prompt_text(conv, byte_tokenizer, prompts.PromptFormat("chat", "Be brief.", TURNS))
    assert chat.startswith("<|system|>Be brief.<|user|>Summarize note 1.")  # Jinja trims the newline after a tag


def test_long_conversations_lose_their_earliest_exchanges_then_are_dropped(byte_tokenizer):
    fmt = prompts.PromptFormat("chat", None, TURNS)
    conv = tasks.messages_conversation(CHATS[0], "messages", "x")
    full = len(tasks.tokenize_conversation(conv, byte_tokenizer, fmt, 1024)["input_ids"])
    short = tasks.tokenize_conversation(conv, byte_tokenizer, fmt, full - 1)
    assert byte_tokenizer.decode(short["input_ids"]) == "<|user|>And its river?<|assistant|>River 0.</s>"
    assert tasks.tokenize_conversation(conv, byte_tokenizer, fmt, 10) is None


def test_a_base_without_a_chat_template_needs_one_from_the_profile(tmp_path, root, byte_tokenizer):
    sft = {
        "format": "messages",
        "train_file": _jsonl(tmp_path / "t.jsonl", CHATS),
        "validation_file": _jsonl(tmp_path / "v.jsonl", CHATS),
    }
    prof = _profile(tmp_path, root, sft, extra={"sft.prompt_style": "chat"})
    with pytest.raises(
        data.DataError, match=r"has no chat template and the profile gives none\. Set sft\.chat_template"
    ):
        prompts.prompt_format(prof, byte_tokenizer)
    (tmp_path / "turns.jinja").write_text(TURNS)
    prof = _profile(tmp_path, root, sft, extra={"sft.prompt_style": "chat", "sft.chat_template": "turns.jinja"})
    assert prompts.prompt_format(prof, byte_tokenizer).chat_template == TURNS
    prof = _profile(tmp_path, root, sft, extra={"sft.prompt_style": "chat", "sft.chat_template": "missing.jinja"})
    with pytest.raises(
        data.DataError, match=r"sft\.chat_template: .*missing\.jinja is neither a Jinja template nor a file"
    ):
        data.validate_inputs(prof)


def test_messages_need_the_chat_prompt_style(tmp_path, root):
    sft = {
        "format": "messages",
        "train_file": _jsonl(tmp_path / "t.jsonl", CHATS),
        "validation_file": _jsonl(tmp_path / "v.jsonl", CHATS),
    }
    with pytest.raises(ProfileError, match=r"data\.sft\.format 'messages' renders conversations with a chat template"):
        _profile(tmp_path, root, sft)


@pytest.mark.parametrize("name, fmt", [("tiny_summaries", "prompt_response"), ("tiny_chat", "messages")])
def test_sample_sets_are_prepared_scrubbed_and_counted(name, fmt, root, tmp_path, byte_tokenizer):
    """The whole sample set through notebook 01's SFT step: counts per split, PII scrubbed in every turn."""
    import re

    prof = config.load_profile(root / "params" / f"{name}.yaml", {"data.max_sft_tokens": 4096})
    run = runs.folder(tmp_path / "run").create(prof)
    sft = data.prepare_sft(prof, byte_tokenizer, run, progress=False)
    rep = sft.report
    rows_in = {"prompt_response": 461, "messages": 462}[fmt]
    assert rep.loaded["train"] == {
        "rows_in": rows_in,
        "examples": 458,
        "duplicate_ids": 3,
        "duplicate_content": rows_in - 461,
    }
    assert rep.loaded["validation"]["examples"] == 91 and rep.overlapping_titles_removed == 0
    assert rep.train_examples == 458 and rep.eval_examples == 91 and rep.dropped_too_long == 0
    assert rep.pii_replacements > 0
    written = run.sft_train_rows.read_text() + run.sft_eval.read_text()
    assert not re.search(r"[\w.]+@[\w-]+\.example\.org|555-01\d\d", written)
    assert {f"data.sft.{fmt}.train.duplicate_ids", f"data.sft.{fmt}.dropped_too_long"} <= set(rep.metrics())
    shuffled = data.shuffled_answer_set(prof, run, byte_tokenizer)
    assert len(shuffled) == 458 and shuffled["input_ids"] != sft.train["input_ids"]


# ---------------------------------------------------------------- scoring and the gate


def test_text_metrics_match_hand_computed_values():
    scores = tasks.text_metrics(
        {"a": "The cat sat on the mat", "b": "nothing"},
        {"a": ["the cat was on a mat"], "b": ["something else", "nothing"]},
    )
    # a: EM 0; tokens after SQuAD normalization cat sat on mat / cat was on mat -> F1 3/4;
    #    ROUGE-L: LCS "the cat on mat"... of 6 and 6 tokens -> 4/6. b: exact on its second reference.
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (0.75 + 1.0) / 2)
    assert scores["rouge_l"] == pytest.approx(100 * (4 / 6 + 1.0) / 2)


def test_the_gate_metric_follows_the_format(tmp_path, root):
    rows = {"train_file": _jsonl(tmp_path / "t.jsonl", ALPACA), "validation_file": _jsonl(tmp_path / "v.jsonl", ALPACA)}
    prof = _profile(tmp_path, root, {"format": "prompt_response", **rows}, extra={"rollback.gate_metric": "auto"})
    assert prof.gate_metric() == "rouge_l"
    assert config.DEFAULT_GATE_METRIC["squad"] == "f1"
    with pytest.raises(
        ProfileError, match=r"rollback\.gate_metric 'rouge_l' is reported for prompt_response and messages"
    ):
        _profile(
            tmp_path,
            root,
            {
                "train_file": str(root / "data/sample/squad/train.jsonl"),
                "validation_file": str(root / "data/sample/squad/validation.jsonl"),
            },
            extra={"rollback.gate_metric": "rouge_l"},
        )


def test_score_line_and_formats_do_not_mix():
    assert (
        evaluate.score_line({"exact_match": 10, "f1": 20.04, "rouge_l": 30, "answer_nll": 1.23456})
        == "EM 10.0, F1 20.0, ROUGE-L 30.0, answer NLL 1.235"
    )
    with pytest.raises(ValueError, match="mix SFT formats"):
        scores.example_format([{"format": "squad"}, {"format": "messages"}])


def test_hub_squad_v2_rows_are_scored_as_v2():
    """The hub's squad_v2 has no is_impossible column: an empty answer list is what marks v2.0."""
    from datasets import Dataset

    rows = [
        {"id": "1", "answers": {"text": ["x"], "answer_start": [0]}},
        {"id": "2", "answers": {"text": [], "answer_start": []}},
    ]
    assert sources.squad_version(Dataset.from_list(rows)) == "v2.0"
    assert sources.squad_version(Dataset.from_list(rows[:1])) == "v1.1"
    assert sources.squad_version(rows) == "v2.0"


# ---------------------------------------------------------------- profiles


def test_variant_profiles_extend_their_parent(root):
    prof = config.load_profile(root / "params" / "smollm2_chat.yaml")
    parent = config.load_profile(root / "params" / "smollm2.yaml")
    assert prof.data.sft.format == "messages" and prof.model == parent.model and prof.sft.train == parent.sft.train
    assert prof.gate_metric() == "rouge_l"


def test_extends_loops_and_other_folders_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ProfileError, match="'extends' makes a loop"):
        config.load_profile(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: ../c.yaml\n")
    with pytest.raises(ProfileError, match="must be in the same folder"):
        config.load_profile(tmp_path / "c.yaml")


# ---------------------------------------------------------------- the sample sets through the notebooks

MICRO = {
    "data.sft_subset_size": 48,
    "data.sft_eval_size": 12,
    "dapt.eval_blocks": 4,
    "dapt.train.max_steps": 2,
    "dapt.train.batch_size": 4,
    "dapt.train.eval_steps": 2,
    "dapt.train.warmup_steps": 0,
    "dapt.train.logging_steps": 1,
    "sft.train.max_steps": 12,
    "sft.train.batch_size": 8,
    "sft.train.eval_steps": 12,
    "sft.train.warmup_steps": 0,
    "sft.train.logging_steps": 2,
    "sft.max_new_tokens": 12,
    "compose.eval_examples": 8,
    "compose.closed_book_examples": 8,
    "compose.switch_repeats": 10,
    "rollback.candidate_steps": 2,
    "rollback.probe_examples": 2,
    "rollback.gate_metric": "auto",
}


# Where the formats differ: reading and rendering (01), the loss on the reply (03), scoring as free text
# (03). From 04 on both are free-text sets of rendered prompts scored by ROUGE-L, through the same code
# (the drill's shuffled replies included: one branch for both, unit-tested above), so the chat set stops
# after 03 and the instruction set goes through all five: a run is about 60 s on one core, most of it
# kernel starts and imports.
THROUGH = {"tiny_summaries": None, "tiny_chat": ["01", "02", "03"]}


@pytest.fixture(scope="module", params=list(THROUGH))
def format_run(request, root, tmp_path_factory, test_outputs):
    from modft_utils import runner

    tmp = tmp_path_factory.mktemp(request.param)
    overrides = {**MICRO, "registry": str(tmp / "registry"), "cache_dir": str(test_outputs / "cache")}
    result = runner.run_notebooks(
        root / "params" / f"{request.param}.yaml",
        run_dir=tmp / "run",
        notebooks=THROUGH[request.param],
        overrides=overrides,
        progress=False,
    )
    return request.param, result


@pytest.mark.slow
def test_sample_sets_go_through_the_notebooks(format_run):
    name, result = format_run
    m = result.metrics
    fmt = {"tiny_summaries": "prompt_response", "tiny_chat": "messages"}[name]
    # Counts per format; the sample train splits carry planted duplicates.
    assert (
        m[f"data.sft.{fmt}.train.rows_in"]
        == m[f"data.sft.{fmt}.train.examples"]
        + m[f"data.sft.{fmt}.train.duplicate_ids"]
        + m[f"data.sft.{fmt}.train.duplicate_content"]
    )
    assert m[f"data.sft.{fmt}.train.duplicate_ids"] == 3
    assert m[f"data.sft.{fmt}.train_examples"] == m["data.sft_train_examples"] > 0
    # Scored as free text, gated on ROUGE-L, and the invariants hold as for SQuAD.
    assert {"sft.rouge_l_domain", "sft.rouge_l_stack"} <= set(m)
    assert m["sft.answer_nll_stack"] < m["sft.answer_nll_domain"]
    assert m["sft.domain_adapter_unchanged"] is True
    if THROUGH[name] is None:  # all five notebooks
        assert "compose.grid.base+domain+task.rouge_l" in m
        assert m["rollback.gate_metric"] == "rouge_l" and "rollback.candidate_rouge_l" in m
        for key in ("task_off", "all_off", "after_rollback", "after_domain_rollback"):
            assert m[f"rollback.max_abs_logit_diff_{key}"] == 0.0
    with open(result.run_dir / "data" / "sft_eval.jsonl", encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    assert first["format"] == fmt
    if fmt == "messages":
        assert first["prompt"].endswith("<|assistant|>\n")
