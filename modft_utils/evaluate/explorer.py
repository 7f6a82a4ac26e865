"""ipywidgets panels for people exploring in JupyterLab. UI only: nothing else imports this module.

What the panels compute is done by plain functions the headless runs test: switching stacks and
loading store versions (:class:`modft_utils.adapters.stack.AdapterStack`), answering with several
stacks side by side and the token diff (:func:`modft_utils.evaluate.scores.compare_answers`), the
prompt for what a person typed, in the task's prompt format (:func:`typed_prompt`, through
:mod:`modft_utils.data.prompts` and :func:`modft_utils.data.tasks.prompt_text`, as training and
scoring build it), and rollbacks (:meth:`modft_utils.store.registry.Registry.rollback`, as
``modft registry rollback`` does).
Each panel keeps its controls in ``panel.parts`` so tests can drive it as a person would.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import TemplateError

from modft_utils import adapters
from modft_utils.adapters import AdapterStack
from modft_utils.data import tasks
from modft_utils.data.prompts import PromptFormat
from modft_utils.evaluate import scores
from modft_utils.store import RegistryError, registry


def _text(value) -> str:
    return html.escape(str(value), quote=False)  # element text: quotes need no escaping


_CHANGED = "background:#ffd54f;border-radius:2px"
_WARN = "color:#a33;font-weight:bold"


def render_answers(result: dict) -> str:
    """Answers side by side; tokens that differ from the first stack's answer are highlighted."""
    cells = []
    for row in result["answers"]:
        if row["error"]:
            body = f"<span style='{_WARN}'>not run: {_text(row['error'])}</span>"
        elif not row["answer"]:
            body = "<i>(empty)</i>"
        else:
            body = "".join(
                f"<span class='modft-changed' style='{_CHANGED}'>{_text(piece)}</span>" if changed else _text(piece)
                for piece, changed in row["tokens"]
            )
        cells.append(
            "<div class='modft-answer' style='flex:1;min-width:12em;border:1px solid #ccc;padding:6px;margin:2px'>"
            f"<div style='font-weight:bold'>{_text(row['stack'])}</div><div style='white-space:pre-wrap'>{body}</div></div>"
        )
    note = f"<div class='modft-note' style='{_WARN}'>{_text(result['note'])}</div>" if result["note"] else ""
    return note + "<div style='display:flex;flex-wrap:wrap'>" + "".join(cells) + "</div>"


# --------------------------------------------------------------------------- what a person types


def typed_prompt(
    tokenizer,
    fmt: PromptFormat,
    question: str,
    context: str | None = None,
    *,
    history: Sequence[tuple[str, str]] = (),
    squad: bool = True,
) -> str:
    """The prompt the model is given for a typed question, rendered as training and scoring render it.

    SQuAD-style tasks (``squad``): ``fmt.prompt`` of the context and the question; no context (or only
    blanks) gives the closed-book form. Instruction and chat sets: the question is the user turn, after
    ``history`` (earlier ``(role, content)`` turns of a held-out conversation), rendered by
    :func:`modft_utils.data.tasks.prompt_text` up to the reply the model writes.
    """
    if squad:
        return fmt.prompt(tokenizer, context if context and context.strip() else None, question)
    turns = (*history, ("user", question), ("assistant", ""))
    return tasks.prompt_text(tasks.Conversation("typed", turns), tokenizer, fmt)


# Marks no prompt contains, rendered as turns to find the text the format writes around each turn.
_MARKS = {"system": "\x00S\x00", "user": "\x00U\x00", "assistant": "\x00A\x00", "next": "\x00V\x00"}


def _rendered(render, turns) -> str | None:
    try:
        return render(turns)
    except (tasks.TaskFormatError, TemplateError, ValueError, TypeError):  # e.g. a template without system turns
        return None


def _around(render, turns: Sequence[tuple[str, str]]) -> list[str] | None:
    """What ``render`` writes before, between and after the marked ``turns``; None if it cannot render them."""
    text = _rendered(render, turns)
    if text is None:
        return None
    pieces = []
    for _, mark in turns:
        head, found, text = text.partition(mark)
        if not found:
            return None
        pieces.append(head)
    return [*pieces, text]


def prompt_turns(prompt: str, tokenizer, fmt: PromptFormat) -> list[tuple[str, str]] | None:
    """The turns an instruction or chat prompt was rendered from (the last one the user's), or None.

    Held-out instruction and chat examples keep only their rendered prompt. Rendering marked turns in
    the same format gives the text it writes around each turn; the prompt is cut there, and the turns
    found count only if rendering them again (:func:`typed_prompt`) gives back ``prompt`` exactly.
    """

    def render(turns) -> str:
        return typed_prompt(tokenizer, fmt, turns[-1][1], history=turns[:-1], squad=False)

    m = _MARKS
    single = _around(render, [("user", m["user"])])
    if single is None or not prompt.endswith(single[1]):
        return None
    opening, closing = single
    chat = fmt.style != "plain"  # the plain format renders one instruction: no earlier turns to find
    multi = _around(render, [("user", m["user"]), ("assistant", m["assistant"]), ("user", m["next"])]) if chat else None
    system = _around(render, [("system", m["system"]), ("user", m["user"])]) if chat else None
    starts: list[tuple[list[tuple[str, str]], str]] = [([], opening)]
    if system is not None and prompt.startswith(system[0]):  # the conversation's own system turn
        end = prompt.find(system[1], len(system[0]))
        if end >= 0:
            starts.append(([("system", prompt[len(system[0]) : end])], prompt[: end + len(system[1])]))
    for head, start in starts:
        if not prompt.startswith(start) or len(start) + len(closing) > len(prompt):
            continue
        body, turns, role = prompt[len(start) : len(prompt) - len(closing)], list(head), "user"
        while multi is not None:
            content, found, rest = body.partition(multi[1] if role == "user" else multi[2])
            if not found:
                break
            turns.append((role, content))
            body, role = rest, "assistant" if role == "user" else "user"
        turns.append((role, body))
        if role == "user" and _rendered(render, turns) == prompt:
            return turns
    return None


def example_fields(example: Mapping[str, Any], tokenizer, fmt: PromptFormat) -> dict[str, Any] | None:
    """What a person would have typed for a held-out example: question, context and earlier turns.

    SQuAD examples carry their question and context; an instruction or chat example carries its
    rendered prompt, split back into turns by :func:`prompt_turns`. None when it cannot be split.
    """
    if "question" in example:
        return {"question": example["question"], "context": example.get("context") or "", "history": ()}
    turns = prompt_turns(example["prompt"], tokenizer, fmt)
    if turns is None:
        return None
    return {"question": turns[-1][1], "context": "", "history": tuple(turns[:-1])}


def _label(n: int, question: str) -> str:
    line = " ".join(question.split())
    return f"{n}: {line[:60] + '...' if len(line) > 60 else line}"


def _history_html(history: Sequence[tuple[str, str]]) -> str:
    if not history:
        return ""
    rows = "".join(
        f"<div><b>{_text(role)}:</b> <span style='white-space:pre-wrap'>{_text(content)}</span></div>"
        for role, content in history
    )
    return (
        "<div class='modft-history' style='border-left:3px solid #ccc;padding-left:6px;font-size:90%'>"
        f"<i>earlier turns of this conversation, kept in the prompt:</i>{rows}</div>"
    )


def stack_explorer(
    model,
    tokenizer,
    examples: Sequence[Mapping[str, Any]],
    *,
    fmt: PromptFormat | None = None,
    roles: Sequence[str] = ("domain", "task"),
    store=None,
    base=None,
    max_new_tokens: int = 12,
    window: int | None = None,
):
    """A checkbox and a version dropdown per adapter, a question (and context) box and a Generate button.

    The dropdown offers this run's adapter (already loaded under the role's name) and every
    version of that adapter in ``store``; a version loads on first use, on the same base. Ticking
    and picking switch the stack without reloading the base; a selection the stack refuses (a task
    version trained on another domain version) leaves the stack as it was and says why.

    A person types a question, and for SQuAD-style ``examples`` (held-out records as notebook 01 saved
    them) the context it is answered from; an empty context asks it closed-book. The prompt is
    rendered in the task's prompt format ``fmt`` (``data.prompt_format(profile, tokenizer)``; default
    plain) by the functions training and scoring use, and shown as the model sees it only on request.
    The example picker fills the boxes from ``examples``. Generate answers with every sub-stack of the
    selection, side by side, differing tokens highlighted.
    """
    import ipywidgets as W

    fmt = fmt or PromptFormat()
    squad = all(e.get("format", "squad") == "squad" for e in examples)
    versions = AdapterStack(model, store, base) if store is not None else None
    window = window or int(getattr(model.config, "max_position_embeddings", 2048))
    present = set(adapters.loaded_adapters(model))

    compose = versions.compose if versions is not None else adapters.switcher(model)

    def options(role: str) -> list[tuple[str, str]]:
        mine = [("this run", role)] if role in present else []
        return mine + (store.choices(role) if store is not None else [])

    roles = [r for r in roles if options(r)]
    active = adapters.active_adapters(model)
    boxes = {r: W.Checkbox(value=r in active, description=r, indent=False) for r in roles}
    picks = {r: W.Dropdown(options=options(r), layout=W.Layout(width="14em")) for r in roles}
    for pick in picks.values():
        pick.add_class("modft-version")

    filled = [(i, f) for i, e in enumerate(examples) if (f := example_fields(e, tokenizer, fmt)) is not None]
    fields = dict(filled)
    picker = W.Dropdown(
        options=[("your own question", -1)] + [(_label(i + 1, f["question"]), i) for i, f in filled],
        value=filled[0][0] if filled else -1,
        description="example",
        layout=W.Layout(width="100%"),
    )
    picker.add_class("modft-example")
    history_view = W.HTML()
    question = W.Textarea(
        placeholder="your question" if squad else "your question or instruction",
        description="question" if squad else "instruction",
        layout=W.Layout(width="100%", height="4em"),
    )
    context = W.Textarea(
        placeholder="the passage it is answered from (empty: asked closed-book)",
        description="context",
        layout=W.Layout(width="100%", height="8em", display=None if squad else "none"),
    )
    show = W.ToggleButton(
        value=False, description="show the prompt as the model sees it", layout=W.Layout(width="auto")
    )
    rendered = W.HTML(layout=W.Layout(display="none"))
    button = W.Button(description="Generate", button_style="primary")
    status, warning, answers = W.HTML(), W.HTML(), W.HTML()
    applied: list[str] = []
    reverting = [False]
    history: list[tuple[str, str]] = []

    def selection() -> list[str]:
        return [picks[r].value for r in roles if boxes[r].value]

    def show_status() -> None:
        current = versions.model if versions is not None else model
        names = adapters.active_adapters(current)
        labels = [
            str(versions.versions[n].ref) if versions is not None and n in versions.versions else n for n in names
        ]
        status.value = f"<b>active stack:</b> <span class='modft-active'>{_text(scores.stack_label(labels))}</span>"

    def on_change(change) -> None:
        if reverting[0]:
            return
        try:
            compose(selection())
        except (adapters.AdapterError, registry.RegistryError) as exc:
            warning.value = f"<div class='modft-warning' style='{_WARN}'>&#9888; {_text(str(exc))}</div>"
            reverting[0] = True
            try:
                change["owner"].value = change["old"]  # back to what runs
            finally:
                reverting[0] = False
        else:
            warning.value = ""
            applied[:] = selection()
        show_status()

    def prompt() -> str:
        return typed_prompt(tokenizer, fmt, question.value, context.value, history=history, squad=squad)

    def show_prompt(_change=None) -> None:
        rendered.layout.display = None if show.value else "none"
        if show.value:
            try:
                text = f"<pre class='modft-prompt' style='white-space:pre-wrap'>{_text(prompt())}</pre>"
            except (ValueError, TemplateError) as exc:  # a format that cannot render it (TaskFormatError)
                text = f"<div class='modft-warning' style='{_WARN}'>{_text(str(exc))}</div>"
            rendered.value = text

    def on_pick(_change=None) -> None:
        chosen = fields.get(picker.value, {"question": "", "context": "", "history": ()})
        history[:] = chosen["history"]
        history_view.value = _history_html(history)
        question.value, context.value = chosen["question"], chosen["context"]
        show_prompt()

    def on_generate(_button) -> None:
        if not question.value.strip():
            answers.value = f"<div class='modft-warning' style='{_WARN}'>type a question first</div>"
            return
        chosen = list(applied)
        subsets = [list(c) for k in range(len(chosen) + 1) for c in itertools.combinations(chosen, k)]
        stacks = {scores.stack_label(s): s for s in subsets}
        try:
            result = scores.compare_answers(
                compose, tokenizer, prompt(), stacks, max_new_tokens=max_new_tokens, window=window
            )
            answers.value = render_answers(result)
        except (ValueError, TemplateError) as exc:  # no room in the window, a format that cannot render it
            answers.value = f"<div class='modft-warning' style='{_WARN}'>{_text(str(exc))}</div>"
        finally:
            compose(chosen)
            show_status()

    for r in roles:
        boxes[r].observe(on_change, names="value")
        picks[r].observe(on_change, names="value")
    picker.observe(on_pick, names="value")
    for box in (question, context, show):
        box.observe(show_prompt, names="value")
    button.on_click(on_generate)
    compose(selection())
    applied[:] = selection()
    show_status()
    on_pick()
    rows = [W.HBox([boxes[r], picks[r]]) for r in roles]
    panel = W.VBox(
        [*rows, status, warning, picker, history_view, question, context, W.HBox([button, show]), rendered, answers]
    )
    panel.parts = {
        "boxes": boxes,
        "picks": picks,
        "examples": picker,
        "history": history_view,
        "question": question,
        "context": context,
        "show_prompt": show,
        "prompt": rendered,
        "generate": button,
        "status": status,
        "warning": warning,
        "answers": answers,
        "stack": versions,
    }
    return panel


def rollback_panel(store, name: str, alias: str = "production", *, actor: str | None = None):
    """The alias, the versions, and a rollback button that asks for confirmation first.

    Confirming calls ``store.rollback`` with the reason typed in, which is what
    ``modft registry rollback`` does, so the audit log records it the same way.
    """
    import ipywidgets as W

    info, message = W.HTML(), W.HTML()
    reason = W.Text(placeholder="reason (kept in the audit log)", layout=W.Layout(width="24em"))
    start = W.Button(description=f"Roll back {name}@{alias}", button_style="warning")
    question = W.HTML()
    confirm = W.Button(description="Confirm rollback", button_style="danger")
    cancel = W.Button(description="Cancel")
    asking = W.VBox([question, W.HBox([confirm, cancel])], layout=W.Layout(display="none"))

    def refresh() -> None:
        current = store.aliases(name).get(alias)
        info.value = (
            f"<b>{_text(name)}@{_text(alias)}</b> &rarr; "
            f"<span class='modft-current'>{'v' + str(current) if current is not None else 'nothing'}</span>"
            f"<pre style='font-size:90%'>{_text(store.show_table(name))}</pre>"
        )

    def on_start(_b) -> None:
        try:
            target = store.rollback_target(name, alias)
        except RegistryError as exc:
            message.value = f"<span style='{_WARN}'>{_text(str(exc))}</span>"
            return
        current = store.aliases(name).get(alias)
        question.value = f"Move <b>{_text(name)}@{_text(alias)}</b> from v{current} back to <b>v{target}</b>?"
        asking.layout.display = "flex"
        message.value = ""

    def on_confirm(_b) -> None:
        try:
            event = store.rollback(
                name, alias, reason=reason.value.strip() or "rolled back from the notebook panel", actor=actor
            )
            message.value = f"rolled back: {_text(name)}@{_text(alias)} v{event['from']} &rarr; v{event['to']}"
        except RegistryError as exc:
            message.value = f"<span style='{_WARN}'>{_text(str(exc))}</span>"
        asking.layout.display = "none"
        refresh()

    def on_cancel(_b) -> None:
        asking.layout.display = "none"
        message.value = "rollback cancelled"

    start.on_click(on_start)
    confirm.on_click(on_confirm)
    cancel.on_click(on_cancel)
    refresh()
    panel = W.VBox([info, W.HBox([start, reason]), asking, message])
    panel.parts = {
        "info": info,
        "reason": reason,
        "rollback": start,
        "confirm": confirm,
        "cancel": cancel,
        "asking": asking,
        "message": message,
    }
    return panel
