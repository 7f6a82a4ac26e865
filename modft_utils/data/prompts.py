"""How an SFT example becomes a prompt: the plain format, or the base's (or the profile's) chat template.

``sft.prompt_style`` picks one; :func:`prompt_format` checks it against the tokenizer before any data is
tokenized, so a base without a usable chat template is refused in notebook 01, naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass

from modft_utils.config import Profile
from modft_utils.errors import DataError

SFT_PROMPT = "Context: {context}\nQuestion: {question}\nAnswer:"
# The user turn of a chat prompt: instruct models answer in sentences unless told what form to use.
CHAT_USER_PROMPT = (
    "Answer with the shortest span of the context that answers the question.\nContext: {context}\nQuestion: {question}"
)
# Closed-book questions (no context): what the model knows, e.g. from the domain corpus DAPT read.
CLOSED_BOOK_PROMPT = "Question: {question}\nAnswer:"
CHAT_CLOSED_BOOK_PROMPT = "Answer with a short phrase.\nQuestion: {question}"


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
        return tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
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
    where = "sft.chat_template" if spec.chat_template else (getattr(tokenizer, "name_or_path", "") or profile.model.id)
    if not template:
        raise DataError(
            f"sft.prompt_style is 'chat' but the base's tokenizer ({where}) has no chat template and the profile "
            "gives none. Set sft.chat_template (Jinja text or a .jinja file), use a base that ships one (an instruct "
            "model's tokenizer_config.json or chat_template.jinja), or, for SQuAD and prompt_response sets, "
            "sft.prompt_style: plain."
        )
    fmt = PromptFormat("chat", spec.system_prompt, template)
    probe = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "ANSWER"}],
        chat_template=template,
        tokenize=False,
    )
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
    if not path.is_file():
        raise DataError(f"sft.chat_template: {path} is neither a Jinja template nor a file")
    return path.read_text(encoding="utf-8")


def format_prompt(context: str, question: str) -> str:
    """The plain prompt (``sft.prompt_style: plain``)."""
    return SFT_PROMPT.format(context=context, question=question)
