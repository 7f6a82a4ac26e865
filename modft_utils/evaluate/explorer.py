"""ipywidgets panels for people exploring in JupyterLab. UI only: nothing else imports this module.

What the panels compute is done by plain functions the headless runs test: switching stacks and
loading store versions (:class:`modft_utils.adapters.stack.AdapterStack`), answering with several
stacks side by side and the token diff (:func:`modft_utils.evaluate.scores.compare_answers`), and
rollbacks (:meth:`modft_utils.store.registry.Registry.rollback`, as ``modft registry rollback`` does).
Each panel keeps its controls in ``panel.parts`` so tests can drive it as a person would.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Sequence

from modft_utils import adapters
from modft_utils.adapters import AdapterStack
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


def stack_explorer(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    roles: Sequence[str] = ("domain", "task"),
    store=None,
    base=None,
    max_new_tokens: int = 12,
    window: int | None = None,
):
    """A checkbox and a version dropdown per adapter, a prompt box and a Generate button.

    The dropdown offers this run's adapter (already loaded under the role's name) and every
    version of that adapter in ``store``; a version loads on first use, on the same base. Ticking
    and picking switch the stack without reloading the base; a selection the stack refuses (a task
    version trained on another domain version) leaves the stack as it was and says why. Generate
    answers with every sub-stack of the selection, side by side, differing tokens highlighted.
    """
    import ipywidgets as W

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
    prompt = W.Textarea(value=prompts[0] if prompts else "", layout=W.Layout(width="100%", height="7em"))
    button = W.Button(description="Generate", button_style="primary")
    status, warning, answers = W.HTML(), W.HTML(), W.HTML()
    applied: list[str] = []
    reverting = [False]

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

    def on_generate(_button) -> None:
        chosen = list(applied)
        subsets = [list(c) for k in range(len(chosen) + 1) for c in itertools.combinations(chosen, k)]
        stacks = {scores.stack_label(s): s for s in subsets}
        try:
            result = scores.compare_answers(
                compose, tokenizer, prompt.value, stacks, max_new_tokens=max_new_tokens, window=window
            )
            answers.value = render_answers(result)
        except ValueError as exc:
            answers.value = f"<div class='modft-warning' style='{_WARN}'>{_text(str(exc))}</div>"
        finally:
            compose(chosen)
            show_status()

    for r in roles:
        boxes[r].observe(on_change, names="value")
        picks[r].observe(on_change, names="value")
    button.on_click(on_generate)
    compose(selection())
    applied[:] = selection()
    show_status()
    rows = [W.HBox([boxes[r], picks[r]]) for r in roles]
    panel = W.VBox([*rows, status, warning, prompt, button, answers])
    panel.parts = {
        "boxes": boxes,
        "picks": picks,
        "prompt": prompt,
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
