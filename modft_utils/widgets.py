"""ipywidgets panels for people exploring in JupyterLab. UI only: nothing else imports this module.

What the panels compute (switching stacks, generating) is done by plain functions in
:mod:`modft_utils.adapters` and :mod:`modft_utils.evaluate`, which the headless runs test.
"""

from __future__ import annotations

from collections.abc import Sequence


def stack_explorer(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 12):
    """A checkbox per loaded adapter, a prompt box and a Generate button.

    Toggling a checkbox switches the active stack on the one loaded base (no reload) and shows
    which adapters are active; Generate answers the prompt with the current stack.
    """
    import ipywidgets as W

    from . import adapters, evaluate

    names = adapters.loaded_adapters(model)
    boxes = {n: W.Checkbox(value=n in adapters.active_adapters(model), description=n, indent=False) for n in names}
    prompt = W.Textarea(value=prompts[0] if prompts else "", layout=W.Layout(width="100%", height="7em"))
    button = W.Button(description="Generate", button_style="primary")
    status = W.HTML()
    answer = W.HTML()

    def current() -> list[str]:
        return [n for n, b in boxes.items() if b.value]

    def show_status() -> None:
        active = adapters.active_adapters(model)
        status.value = f"<b>active stack:</b> base{''.join(' + ' + n for n in active)}"

    def on_toggle(_change) -> None:
        adapters.activate(model, current())
        show_status()

    def on_generate(_button) -> None:
        out = evaluate.generate(model, tokenizer, [prompt.value], max_new_tokens=max_new_tokens)[0]
        answer.value = f"<pre>{out or '(empty)'}</pre>"

    for b in boxes.values():
        b.observe(on_toggle, names="value")
    button.on_click(on_generate)
    adapters.activate(model, current())
    show_status()
    return W.VBox([W.HBox(list(boxes.values())), status, prompt, button, answer])
