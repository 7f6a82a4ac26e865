"""How an SFT example becomes a prompt: the plain format, or the base's (or the profile's) chat template.

``sft.prompt_style`` picks one; :func:`prompt_format` checks it against the tokenizer before any data is
tokenized, so a base without a usable chat template is refused in notebook 01, naming the key.

A chat template is a program (Jinja), and the profile's may come from anyone: every rendering goes
through :func:`render_bounded`, which stops one that runs longer than :data:`RENDER_SECONDS` (nested
loops over ``range(100000)`` never end) and turns any failure of the template (a ``SecurityError``
of the sandbox, an ``UndefinedError``, ``raise_exception``) into a :class:`DataError` naming
``sft.chat_template`` (or the base whose template it is). ``modft validate`` renders the profile's
template once (:func:`check_chat_template`), so such a template fails there, not in notebook 01.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from modft_utils.config import Profile, cut, special_file
from modft_utils.errors import DataError

SFT_PROMPT = "Context: {context}\nQuestion: {question}\nAnswer:"
# The user turn of a chat prompt: instruct models answer in sentences unless told what form to use.
CHAT_USER_PROMPT = (
    "Answer with the shortest span of the context that answers the question.\nContext: {context}\nQuestion: {question}"
)
# Closed-book questions (no context): what the model knows, e.g. from the domain corpus DAPT read.
CLOSED_BOOK_PROMPT = "Question: {question}\nAnswer:"
CHAT_CLOSED_BOOK_PROMPT = "Answer with a short phrase.\nQuestion: {question}"
TEMPLATE_KEY = "sft.chat_template"
# A chat template renders a conversation in milliseconds; seconds mean a loop that does not end.
RENDER_SECONDS = 5.0
JINJA_FILENAME = "<template>"  # what Jinja compiles a template from a string as (Environment.compile)
# The conversation a template is checked with: what every template must render.
PROBE = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "ANSWER"}]


class _RenderTimeout(BaseException):
    """Raised inside a template's code when its time is up; a BaseException, so no ``except Exception`` keeps it."""


def render_bounded(render: Callable[[], str], where: str, seconds: float | None = None) -> str:
    """``render()`` (a chat template rendering), stopped after ``seconds``; any failure names ``where``.

    Jinja compiles a template to Python code, so a trace function sees every line of it run, whatever
    the template does: it gives up when the time is over, in any thread (``signal.alarm`` works only
    on the main thread, and a thread cannot be stopped). Only the template's own frames are traced
    line by line, so the rest of the call runs at full speed.
    """
    limit = RENDER_SECONDS if seconds is None else seconds
    deadline = time.monotonic() + limit

    def on_line(frame: FrameType, event: str, arg: Any) -> Callable | None:
        if time.monotonic() > deadline:
            raise _RenderTimeout
        return on_line

    def on_call(frame: FrameType, event: str, arg: Any) -> Callable | None:
        if time.monotonic() > deadline:
            raise _RenderTimeout
        # A loop with an empty body calls nothing: its lines are what show it running.
        return on_line if frame.f_code.co_filename == JINJA_FILENAME else None

    previous = sys.gettrace()  # a debugger's or coverage's, given back afterwards
    sys.settrace(on_call)
    try:
        return render()
    except _RenderTimeout:
        raise DataError(
            f"{where}: rendering one conversation took more than {limit:g} s (a loop that does not end?); "
            "a chat template must render in milliseconds"
        ) from None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - SecurityError, UndefinedError, TypeError... from the template
        first = cut((str(exc).strip().splitlines() or [""])[0])
        raise DataError(f"{where}: the chat template cannot be rendered ({type(exc).__name__}: {first})") from None
    finally:
        sys.settrace(previous)


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes a prompt, and how its answer follows (``sft.prompt_style``).

    ``plain`` writes ``Context: ... Question: ... Answer:`` and the answer follows after a space;
    ``chat`` renders the same as a user turn with the base's own chat template (with the generation
    prompt), and the answer is the assistant's turn, closed by the end-of-turn token. Both end an
    answer with the tokenizer's EOS, which is what generation stops on.
    """

    style: str = "plain"
    system_prompt: str | None = None
    chat_template: str | None = None
    template_source: str = TEMPLATE_KEY  # what a rendering error names: the key, or the base's template

    @property
    def answer_prefix(self) -> str:
        return " " if self.style == "plain" else ""

    def prompt(self, tokenizer, context: str | None, question: str) -> str:
        """The prompt for ``question``; with ``context`` None, the closed-book form (no context)."""
        if self.style == "plain":
            if context is None:
                return CLOSED_BOOK_PROMPT.format(question=question)
            return SFT_PROMPT.format(context=context, question=question)
        user = (
            CHAT_CLOSED_BOOK_PROMPT.format(question=question)
            if context is None
            else CHAT_USER_PROMPT.format(context=context, question=question)
        )
        messages = [{"role": "user", "content": user}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.render(tokenizer, messages, generation_prompt=True)

    def render(self, tokenizer, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
        """``messages`` through the chat template, bounded in time; errors name :attr:`template_source`."""
        return render_bounded(
            lambda: tokenizer.apply_chat_template(
                messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=generation_prompt
            ),
            self.template_source,
        )


def prompt_format(profile: Profile, tokenizer) -> PromptFormat:
    """The profile's prompt format, checked against the tokenizer before any data is tokenized.

    ``chat`` needs a chat template whose assistant turn ends with the tokenizer's EOS token (what
    training teaches the model to emit and generation stops on); a base without one is refused here,
    naming the key and the base, before anything is trained.
    """
    spec = profile.sft
    if spec.prompt_style == "plain":
        return PromptFormat("plain")
    template = chat_template(profile) or getattr(tokenizer, "chat_template", None)
    where = TEMPLATE_KEY if spec.chat_template else (getattr(tokenizer, "name_or_path", "") or profile.model.id)
    if not template:
        raise DataError(
            f"sft.prompt_style is 'chat' but the base's tokenizer ({where}) has no chat template and the profile "
            "gives none. Set sft.chat_template (Jinja text or a .jinja file), use a base that ships one (an instruct "
            "model's tokenizer_config.json or chat_template.jinja), or, for SQuAD and prompt_response sets, "
            "sft.prompt_style: plain."
        )
    source = TEMPLATE_KEY if spec.chat_template else f"the chat template of {where}"
    fmt = PromptFormat("chat", spec.system_prompt, template, source)
    probe = fmt.render(tokenizer, PROBE, generation_prompt=False)
    if tokenizer.eos_token is None or f"ANSWER{tokenizer.eos_token}" not in probe:
        raise DataError(
            f"sft.prompt_style 'chat': the chat template of {where} does not end an assistant turn with the EOS "
            f"token {tokenizer.eos_token!r}, so generation could not tell where an answer ends. Use "
            "sft.prompt_style: plain for this base."
        )
    return fmt


def chat_template(profile: Profile) -> str | None:
    """``sft.chat_template`` as Jinja text: written in the profile, or read from the .jinja file it names."""
    value = profile.sft.chat_template
    if value is None or "{" in value:
        return value
    path = profile.resolve(value)
    if (kind := special_file(path)) is not None:
        raise DataError(f"{TEMPLATE_KEY}: {path} is {kind}, not a regular file")
    if not path.is_file():
        raise DataError(f"{TEMPLATE_KEY}: {path} is neither a Jinja template nor a file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{TEMPLATE_KEY}: {path}, line {line}: not valid UTF-8 at byte {exc.start}") from None


def check_chat_template(profile: Profile) -> str | None:
    """The profile's chat template, read and rendered once on a probe conversation, with no tokenizer.

    What ``modft validate`` runs: a template file that is missing, does not compile, is refused by
    the sandbox or does not end fails here, naming ``sft.chat_template``, before any model loads.
    Whether it ends assistant turns with the base's EOS needs the tokenizer: :func:`prompt_format`.
    """
    template = chat_template(profile)
    if template is None:
        return None
    from transformers.utils.chat_template_utils import render_jinja_template

    def render() -> str:
        rendered, _ = render_jinja_template(
            conversations=[PROBE], chat_template=template, add_generation_prompt=False, bos_token="", eos_token=""
        )
        return rendered[0]

    return render_bounded(render, TEMPLATE_KEY)


def format_prompt(context: str, question: str) -> str:
    """The plain prompt (``sft.prompt_style: plain``)."""
    return SFT_PROMPT.format(context=context, question=question)
