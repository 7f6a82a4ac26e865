"""The notebook panels driven as a person would (ticks, picks, clicks, typing), and the functions behind them."""

import html

import pytest

from modft_utils import adapters, config, evaluate, modeling
from modft_utils.data import PromptFormat, tasks
from modft_utils.evaluate import explorer as panels
from modft_utils.evaluate import scores
from modft_utils.store import registry

HELD_OUT = [
    {
        "id": "q1",
        "context": "Maszaer is a harbour.",
        "question": "What is Maszaer?",
        "answers": ["a harbour"],
        "prompt": "Context: Maszaer is a harbour.\nQuestion: What is Maszaer?\nAnswer:",
        "format": "squad",
    },
    {
        "id": "q2",
        "context": "The Thaenen Isles lie west of Maszaer.",
        "question": "Where do the Thaenen Isles lie?",
        "answers": ["west of Maszaer"],
        "prompt": "Context: The Thaenen Isles lie west of Maszaer.\nQuestion: Where do the Thaenen Isles lie?\nAnswer:",
        "format": "squad",
    },
]


@pytest.fixture(scope="module")
def tiny(root, test_outputs):
    prof = config.load_profile(root / "params" / "tiny.yaml", {"cache_dir": str(test_outputs / "cache")})
    base = modeling.ensure_base(prof, progress=False)
    return prof, base, modeling.load_tokenizer(base)


@pytest.fixture(scope="module")
def published(tiny, tmp_path_factory, random_adapter):
    """domain@1, domain@2; task@1 trained on domain@1, task@2 on domain@2; the adapter folders by name."""
    prof, base, _ = tiny
    out = tmp_path_factory.mktemp("widgets")
    model = modeling.load_base(prof, base)
    identity = registry.base_identity(model, model_id="tiny")
    store = registry.Registry(out / "registry")
    folders = {}
    plan = [
        ("domain", prof.dapt.lora, None),
        ("domain", prof.dapt.lora, None),
        ("task", prof.sft.lora, "domain@1"),
        ("task", prof.sft.lora, "domain@2"),
    ]
    for seed, (name, spec, parent) in enumerate(plan, start=1):
        model = random_adapter(model, f"a{seed}", spec, seed)
        folders[seed] = adapters.save_adapter(model, f"a{seed}", out / f"a{seed}")
        store.publish(name, folders[seed], base=identity, parent=parent, params={}, data_fingerprint="", metrics={})
    store.promote("domain", 1, reason="test")
    store.promote("task", 1, reason="test")
    return store, identity, folders


@pytest.fixture
def explorer(tiny, published):
    """This run's adapters are domain@1 and task@1's files, loaded under their role names."""
    prof, base, tok = tiny
    store, identity, folders = published
    model = adapters.load_adapter(modeling.load_base(prof, base), folders[1], "domain", base=identity)
    model = adapters.load_adapter(model, folders[3], "task", base=identity)
    adapters.activate(model, ["domain"])
    panel = evaluate.stack_explorer(
        model, tok, HELD_OUT, fmt=PromptFormat("plain"), store=store, base=identity, max_new_tokens=6
    )
    return panel, model


def _active(panel):
    return panel.parts["status"].value.split("modft-active'>")[1].split("<")[0]


def test_ticks_and_picks_switch_the_stack(explorer):
    panel, model = explorer
    boxes, picks = panel.parts["boxes"], panel.parts["picks"]
    assert _active(panel) == "base + domain"
    assert [label for label, _ in picks["task"].options] == ["this run", "v2", "v1 (production)"]
    boxes["task"].value = True
    assert _active(panel) == "base + domain + task" and adapters.active_adapters(model) == ["domain", "task"]
    boxes["domain"].value = False
    assert _active(panel) == "base + task"
    picks["domain"].value, boxes["domain"].value = "domain@2", True
    assert _active(panel) == "base + domain@2 + task"
    picks["task"].value = "task@2"
    assert _active(panel) == "base + domain@2 + task@2" and panel.parts["warning"].value == ""


def test_a_version_on_the_wrong_parent_is_a_warning_not_a_traceback(explorer):
    panel, _ = explorer
    boxes, picks = panel.parts["boxes"], panel.parts["picks"]
    boxes["task"].value = True
    picks["task"].value = "task@2"  # trained on domain@2; this run's domain is not from the store
    warning = panel.parts["warning"].value
    assert "task@2 was trained on domain@2" in warning and "'domain' loaded from a folder" in warning
    assert picks["task"].value == "task" and _active(panel) == "base + domain + task"  # nothing changed
    picks["domain"].value = "domain@1"
    picks["task"].value = "task@2"
    assert "active domain is domain@1" in panel.parts["warning"].value and picks["task"].value == "task"


def test_generate_shows_every_sub_stack_with_the_differences_marked(explorer):
    panel, model = explorer
    panel.parts["boxes"]["task"].value = True
    panel.parts["generate"].click()
    html = panel.parts["answers"].value
    assert html.count("modft-answer") == 4
    for label in ("base", "base + domain", "base + task", "base + domain + task"):
        assert f">{label}</div>" in html
    assert adapters.active_adapters(model) == ["domain", "task"]  # the selection runs again afterwards
    panel.parts["context"].value = "word " * 2000
    panel.parts["generate"].click()
    assert (
        "prompt truncated:" in panel.parts["answers"].value and "model window of 1024" in panel.parts["answers"].value
    )


def test_the_boxes_take_a_question_and_a_context_and_the_template_shows_on_request(explorer, tiny):
    _, _, tok = tiny
    panel, _ = explorer
    parts = panel.parts
    # Filled from the first held-out example: what a person would type, not the template.
    assert (parts["question"].value, parts["context"].value) == ("What is Maszaer?", "Maszaer is a harbour.")
    assert parts["context"].layout.display != "none" and parts["prompt"].layout.display == "none"
    parts["show_prompt"].value = True
    assert parts["prompt"].layout.display != "none"
    assert ">Context: Maszaer is a harbour.\nQuestion: What is Maszaer?\nAnswer:</pre>" in parts["prompt"].value
    parts["examples"].value = 1  # the second held-out example: rendered as training and scoring render it
    assert parts["question"].value == "Where do the Thaenen Isles lie?"
    assert f">{HELD_OUT[1]['prompt']}</pre>" in parts["prompt"].value
    parts["examples"].value = -1  # your own question, asked closed-book
    assert parts["question"].value == parts["context"].value == ""
    parts["generate"].click()
    assert "type a question first" in parts["answers"].value
    parts["question"].value = "Who founded Posaby?"
    assert ">Question: Who founded Posaby?\nAnswer:</pre>" in parts["prompt"].value
    parts["context"].value = "Shine Tolard founded Posaby & more."
    assert ">Context: Shine Tolard founded Posaby &amp; more.\nQuestion: Who founded Posaby?\nAnswer:</pre>" in (
        parts["prompt"].value
    )
    parts["generate"].click()
    assert parts["answers"].value.count("modft-answer") == 2  # base and base + domain
    parts["show_prompt"].value = False
    assert parts["prompt"].layout.display == "none"


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize("template", ["turns", "chatml"])
@pytest.mark.parametrize("system_prompt", [None, "You answer in a few words."])
def test_a_held_out_chat_prompt_goes_back_into_the_boxes(root, tiny, template, system_prompt):
    _, _, tok = tiny
    text = (root / "params" / "templates" / "turns.jinja").read_text() if template == "turns" else CHATML
    fmt = PromptFormat("chat", system_prompt, text)
    conversations = [
        [("user", "Here is a note:\nMaszaer is a harbour.\n\nWhat is Maszaer?")],
        [
            ("system", "You are the archive assistant."),
            ("user", "Who built it?"),
            ("assistant", "Aelo"),
            ("user", "When?"),
        ],
        [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e\nf")],
    ]
    for turns in conversations:
        conv = tasks.Conversation("x", (*turns, ("assistant", "the reply")))
        prompt = tasks.prompt_text(conv, tok, fmt)
        assert panels.prompt_turns(prompt, tok, fmt) == turns
        fields = panels.example_fields({"id": "x", "prompt": prompt, "answers": ["r"], "format": "messages"}, tok, fmt)
        assert fields == {"question": turns[-1][1], "context": "", "history": tuple(turns[:-1])}
        typed = panels.typed_prompt(tok, fmt, fields["question"], history=fields["history"], squad=False)
        assert typed == prompt
    assert panels.prompt_turns("not a prompt of this format", tok, fmt) is None


def test_an_instruction_set_gets_one_box_and_its_earlier_turns_kept(root, tiny, published):
    prof, base, tok = tiny
    _, identity, folders = published
    fmt = PromptFormat("chat", None, (root / "params" / "templates" / "turns.jinja").read_text())
    turns = [("user", "Here is a note:\nMaszaer is a harbour."), ("assistant", "Noted."), ("user", "What is Maszaer?")]
    prompt = tasks.prompt_text(tasks.Conversation("c1", (*turns, ("assistant", "a harbour"))), tok, fmt)
    plain = tasks.prompt_text(
        tasks.Conversation("c2", (("user", "Summarise: a b c"), ("assistant", "abc"))), tok, PromptFormat()
    )
    assert panels.example_fields({"prompt": plain}, tok, PromptFormat()) == {
        "question": "Summarise: a b c",
        "context": "",
        "history": (),
    }
    model = adapters.load_adapter(modeling.load_base(prof, base), folders[1], "domain", base=identity)
    panel = evaluate.stack_explorer(
        model, tok, [{"id": "c1", "prompt": prompt, "answers": ["a harbour"], "format": "messages"}], fmt=fmt
    )
    parts = panel.parts
    assert parts["question"].value == "What is Maszaer?" and parts["context"].layout.display == "none"
    assert "earlier turns" in parts["history"].value and "Noted." in parts["history"].value
    parts["show_prompt"].value = True
    assert (
        parts["prompt"].value == f"<pre class='modft-prompt' style='white-space:pre-wrap'>{html.escape(prompt)}</pre>"
    )
    parts["examples"].value = -1
    parts["question"].value = "Where is Maszaer?"
    own = tasks.prompt_text(tasks.Conversation("y", (("user", "Where is Maszaer?"), ("assistant", ""))), tok, fmt)
    assert parts["history"].value == "" and f">{html.escape(own)}</pre>" in parts["prompt"].value
    parts["generate"].click()
    assert parts["answers"].value.count("modft-answer") == 2  # base and base + domain


def test_fit_prompt_keeps_the_end_and_says_what_it_cut(tiny):
    _, _, tok = tiny
    prompt = "Context: " + "the harbour of Maszaer " * 200 + "\nQuestion: Where?\nAnswer:"
    assert scores.fit_prompt(tok, "Question: Where?\nAnswer:", window=64, max_new_tokens=8) == (
        "Question: Where?\nAnswer:",
        None,
    )
    cut, note = scores.fit_prompt(tok, prompt, window=64, max_new_tokens=8)
    n = len(tok(prompt, add_special_tokens=False)["input_ids"])
    kept = len(tok(cut, add_special_tokens=False)["input_ids"])
    assert kept <= 56 and cut.endswith("\nQuestion: Where?\nAnswer:") and prompt.endswith(cut.lstrip())
    assert note.startswith(f"prompt truncated: {n} tokens do not fit the model window of 64 with 8 left for the answer")
    assert n - 56 <= int(note.split("the first ")[1].split()[0]) <= n - kept
    with pytest.raises(ValueError, match="no room"):
        scores.fit_prompt(tok, prompt, window=8, max_new_tokens=8)


def test_diff_tokens_marks_only_what_changed():
    assert scores.diff_tokens(["The", " harbour", " of", " Maszaer"], ["The", " port", " of", " Maszaer", "."]) == [
        ("The", False),
        (" port", True),
        (" of", False),
        (" Maszaer", False),
        (".", True),
    ]
    assert scores.diff_tokens([], ["a"]) == [("a", True)]


def test_compare_answers_reports_a_refused_stack_in_its_column(tiny, explorer):
    _, _, tok = tiny
    panel, _ = explorer
    stack = panel.parts["stack"]
    result = scores.compare_answers(
        stack.compose,
        tok,
        "Question: Where?\nAnswer:",
        {"base": [], "mismatch": ["domain@1", "task@2"]},
        max_new_tokens=4,
        window=256,
    )
    assert result["answers"][0]["error"] is None and result["note"] is None
    assert "task@2 was trained on domain@2" in result["answers"][1]["error"]
    assert "not run: task@2" in evaluate.render_answers(result)


def test_rollback_panel_asks_before_it_moves_the_alias(published):
    store, _, _ = published
    store.promote("task", 2, reason="panel test")
    panel = evaluate.rollback_panel(store, "task", actor="tester")
    parts = panel.parts
    assert "modft-current'>v2<" in parts["info"].value and "task@2" in parts["info"].value
    parts["rollback"].click()
    assert parts["asking"].layout.display == "flex" and "from v2 back to <b>v1</b>" in parts["asking"].children[0].value
    parts["cancel"].click()
    assert store.aliases("task")["production"] == 2 and parts["message"].value == "rollback cancelled"
    parts["rollback"].click()
    parts["reason"].value = "answers regressed"
    parts["confirm"].click()
    assert store.aliases("task")["production"] == 1
    last = store.audit("task")[-1]
    assert (last["event"], last["from"], last["to"], last["reason"], last["actor"]) == (
        "rollback",
        2,
        1,
        "answers regressed",
        "tester",
    )
    assert "modft-current'>v1<" in parts["info"].value and "v2 &rarr; v1" in parts["message"].value
    parts["rollback"].click()  # nothing earlier to go back to: said in the panel, nothing raised
    assert "no earlier version" in parts["message"].value and parts["asking"].layout.display == "none"
