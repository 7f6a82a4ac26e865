"""Instruction and chat SFT sets: reading them, checking them, and rendering them for training.

Besides SQuAD (:mod:`modft_utils.data.squad`), ``data.sft.format`` takes the two shapes the peer tools read:

``prompt_response``
    One instruction and its response per row, under field names the profile maps
    (``data.sft.fields``; the defaults are alpaca's ``instruction`` / ``input`` / ``output``), so
    alpaca files and custom JSONL or CSV work without conversion.
``messages``
    A conversation per row (``data.sft.messages_field``): a list of turns with ``role`` / ``content``
    (OpenAI style) or ``from`` / ``value`` (ShareGPT: ``human``, ``gpt``), an optional system turn
    first, then user and assistant alternating, ending with the assistant.

Both become a :class:`Conversation`. Rendered with the chat template (or the plain prompt for
``prompt_response`` with ``sft.prompt_style: plain``), only assistant tokens carry labels; every other
token (system, user, the template's role markers) has label -100. The last assistant turn is what
evaluation asks for and scores.

Files are JSON lines, a JSON list, CSV or parquet; every error names the profile key, the file and the
row (a JSON-lines row is its line number). Only regular files are opened, and a file that is cut
short, mislabelled, nested too deeply or holds values of the wrong type is refused with that name,
never a library's traceback; values an error quotes are cut short (:func:`modft_utils.config.short`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modft_utils.config import cut, short, special_file
from modft_utils.data.pii import scrub_pii_with_spans
from modft_utils.data.readers import SourceError, csv_rows, decoded_lines
from modft_utils.data.squad import exact_match_score, f1_score
from modft_utils.errors import ModftError

TASK_FORMATS = ("squad", "prompt_response", "messages")
# What scoring reports per format (answer NLL is reported for every format).
SCORES = {
    "squad": ("exact_match", "f1"),
    "prompt_response": ("exact_match", "f1", "rouge_l"),
    "messages": ("exact_match", "f1", "rouge_l"),
}
ROLE_NAMES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "system": "system",
}
PLAIN_PROMPT = "{prompt}\nResponse:"  # sft.prompt_style plain: the response follows after a space


class TaskFormatError(ModftError, ValueError):
    """A row or file of an instruction or chat set that cannot be used; names the key, file and row."""


@dataclass(frozen=True)
class Conversation:
    """One training or evaluation example: turns ending with the assistant turn that is scored."""

    id: str
    messages: tuple[tuple[str, str], ...]  # (role, content)

    @property
    def reference(self) -> str:
        return self.messages[-1][1]

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def with_reference(self, text: str) -> Conversation:
        return Conversation(self.id, self.messages[:-1] + (("assistant", text),))


@dataclass
class TaskReport:
    """What one file gave: rows read, examples kept, and how many were dropped for which reason."""

    rows_in: int = 0
    examples: int = 0
    duplicate_ids: int = 0
    duplicate_content: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "rows_in": self.rows_in,
            "examples": self.examples,
            "duplicate_ids": self.duplicate_ids,
            "duplicate_content": self.duplicate_content,
        }

    def why(self) -> str:
        return (
            f"{self.rows_in} row(s) read, {self.duplicate_ids} duplicate id(s), "
            f"{self.duplicate_content} duplicate conversation(s)"
        )


@dataclass(frozen=True)
class FieldMap:
    """Where a ``prompt_response`` row keeps its parts (``data.sft.fields``)."""

    prompt: str = "instruction"
    input: str | None = "input"
    response: str = "output"
    system: str | None = None
    id: str | None = "id"


# ---------------------------------------------------------------- reading files


def _json(text: str, key: str, path: Path, line: int | None) -> Any:
    """``json.loads`` whose every failure names the key, the file and the line."""
    at = f"{key}: {path}" + (f", line {line}" if line is not None else "")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskFormatError(f"{key}: {path}, line {line or exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:  # json recurses once per [ or {: 100,000 of them overflow the stack
        raise TaskFormatError(f"{at}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise TaskFormatError(f"{at}: not valid JSON ({cut(str(exc))})") from None


def read_records(path: Path, key: str) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` for every row of a JSON-lines, JSON-list, CSV or parquet file.

    ``where`` says where the row is for messages: ``line N`` in JSON lines, ``row N`` otherwise.
    """

    if path.is_dir():
        raise TaskFormatError(f"{key}: {path} is a folder; give the file (.jsonl, .json, .csv or .parquet)")
    if (kind := special_file(path)) is not None:  # opening a FIFO blocks `modft validate` forever
        raise TaskFormatError(f"{key}: {path} is {kind}, not a regular file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            for n, row in csv_rows(path, key):
                yield f"row {n}", row
        except SourceError as exc:
            raise TaskFormatError(str(exc)) from None
        return
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - ArrowInvalid on a cut or mislabelled file, OSError alike
            first = cut((str(exc).strip().splitlines() or [type(exc).__name__])[0])
            raise TaskFormatError(
                f"{key}: {path}: not readable as parquet ({type(exc).__name__}: {first}); "
                "the file is cut short or not parquet"
            ) from None
        for n, row in enumerate(table.to_pylist(), start=1):
            yield f"row {n}", row
        return
    if suffix not in (".jsonl", ".json"):
        raise TaskFormatError(
            f"{key}: {path}: no reader for {short(suffix) if suffix else 'files without an extension'}; "
            "instruction and chat sets are read from .jsonl, .json, .csv or .parquet"
        )
    try:
        lines = list(decoded_lines(path, key))
    except SourceError as exc:
        raise TaskFormatError(str(exc)) from None
    text = "".join(line for _, line in lines).strip()
    if suffix == ".json" and text.startswith("["):  # a JSON list of rows
        for n, row in enumerate(_json(text, key, path, None), start=1):
            yield f"row {n}", row
        return
    for lineno, line in lines:
        if line.strip():
            yield f"line {lineno}", _json(line, key, path, lineno)


# ---------------------------------------------------------------- rows -> conversations


def _text(row: dict, name: str, where: str, what: str, *, required: bool) -> str | None:
    if name not in row or row[name] is None:
        if required:
            raise TaskFormatError(f"{where}: missing field {short(name)} ({what}); the row has {_fields(row)}")
        return None
    value = row[name]
    if not isinstance(value, str):
        raise TaskFormatError(f"{where}: field {short(name)} ({what}) must be text, got {type(value).__name__}")
    return value


def prompt_response_conversation(row: Any, fields: FieldMap, where: str) -> Conversation:
    """An instruction row as system? + user + assistant turns; the user turn is prompt, then input if any."""
    if not isinstance(row, dict):
        raise TaskFormatError(f"{where}: expected an object with fields, got {type(row).__name__}")
    prompt = _text(row, fields.prompt, where, "data.sft.fields.prompt", required=True)
    response = _text(row, fields.response, where, "data.sft.fields.response", required=True)
    extra = _text(row, fields.input, where, "data.sft.fields.input", required=False) if fields.input else None
    system = _text(row, fields.system, where, "data.sft.fields.system", required=False) if fields.system else None
    if not prompt.strip():
        raise TaskFormatError(f"{where}: field {short(fields.prompt)} (data.sft.fields.prompt) is empty")
    if not response.strip():
        raise TaskFormatError(
            f"{where}: field {short(fields.response)} (data.sft.fields.response) is empty: nothing to learn"
        )
    user = prompt.strip() + (f"\n\n{extra.strip()}" if extra and extra.strip() else "")
    turns = ((("system", system.strip()),) if system and system.strip() else ()) + (
        ("user", user),
        ("assistant", response.strip()),
    )
    return Conversation(_row_id(row, fields.id, turns), turns)


def messages_conversation(row: Any, messages_field: str, where: str, id_field: str | None = "id") -> Conversation:
    """A chat row: an optional system turn, then user/assistant alternating, ending with the assistant."""
    if not isinstance(row, dict):
        raise TaskFormatError(
            f"{where}: expected an object with a {short(messages_field)} field, got {type(row).__name__}"
        )
    turns_in = row.get(messages_field)
    if not isinstance(turns_in, list) or not turns_in:
        raise TaskFormatError(
            f"{where}: field {short(messages_field)} (data.sft.messages_field) must be a non-empty list "
            f"of turns; the row has {_fields(row)}"
        )
    turns: list[tuple[str, str]] = []
    for i, turn in enumerate(turns_in):
        at = f"{where}, turn {i}"
        if not isinstance(turn, dict):
            raise TaskFormatError(f"{at}: expected an object with role and content")
        role_raw = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        # A role that is a list or an object is unhashable: `in ROLE_NAMES` raised TypeError.
        if not isinstance(role_raw, Hashable) or role_raw not in ROLE_NAMES:
            raise TaskFormatError(f"{at}: unknown role {short(role_raw)} (expected one of {sorted(ROLE_NAMES)})")
        if not isinstance(content, str):
            raise TaskFormatError(f"{at}: content must be text, got {type(content).__name__}")
        turns.append((ROLE_NAMES[role_raw], content.strip()))
    body = turns[1:] if turns[0][0] == "system" else turns
    for i, (role, content) in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            first = 1 if turns[0][0] == "system" else 0
            raise TaskFormatError(
                f"{where}, turn {i + first}: roles must alternate user, assistant, ... after an "
                f"optional system turn; found {role!r} where {expected!r} belongs"
            )
        if role == "assistant" and not content:
            raise TaskFormatError(
                f"{where}, turn {i + (len(turns) - len(body))}: empty assistant turn: nothing to learn"
            )
    if not body or body[-1][0] != "assistant":
        raise TaskFormatError(
            f"{where}: the conversation has no assistant turn to learn from"
            if len(body) < 2
            else f"{where}: the conversation ends with a user turn; it must end "
            "with the assistant turn that is learned and scored"
        )
    return Conversation(_row_id(row, id_field, tuple(turns)), tuple(turns))


def _fields(row: dict) -> str:
    """The row's field names for a message, a few of them, each cut short (a row may have thousands)."""
    names = sorted(str(k) for k in row)
    shown = ", ".join(short(n, 40) for n in names[:12])
    return f"[{shown}{f', ... {len(names) - 12} more' if len(names) > 12 else ''}]"


def _row_id(row: dict, id_field: str | None, turns) -> str:
    value = row.get(id_field) if id_field else None
    if value is not None and str(value).strip():
        return str(value)
    return hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode()).hexdigest()[:24]


def conversations(
    rows: Iterable[tuple[str, Any]], fmt: str, *, fields: FieldMap, messages_field: str, source: str
) -> tuple[list[Conversation], TaskReport]:
    """Every row as a :class:`Conversation`, de-duplicated by id and by content, with the counts."""
    report = TaskReport()
    out: list[Conversation] = []
    ids: set[str] = set()
    contents: set[tuple] = set()
    for where, row in rows:
        report.rows_in += 1
        at = f"{source}, {where}"
        conv = (
            prompt_response_conversation(row, fields, at)
            if fmt == "prompt_response"
            else messages_conversation(row, messages_field, at, fields.id)
        )
        if conv.id in ids:
            report.duplicate_ids += 1
            continue
        if conv.messages in contents:
            report.duplicate_content += 1
            continue
        ids.add(conv.id)
        contents.add(conv.messages)
        out.append(conv)
    report.examples = len(out)
    return out, report


def read_conversations(
    path: Path, key: str, fmt: str, *, fields: FieldMap, messages_field: str
) -> tuple[list[Conversation], TaskReport]:
    """A local instruction or chat file as conversations; errors name ``key``, the file and the row."""
    return conversations(
        read_records(path, key), fmt, fields=fields, messages_field=messages_field, source=f"{key}: {path}"
    )


def hub_conversations(
    table, fmt: str, *, fields: FieldMap, messages_field: str, source: str
) -> tuple[list[Conversation], TaskReport]:
    """A hub split (``datasets`` table) as conversations, read row by row as a file is."""
    rows = ((f"row {i + 1}", row) for i, row in enumerate(table))
    return conversations(rows, fmt, fields=fields, messages_field=messages_field, source=source)


# ---------------------------------------------------------------- rendering and labels


def _render(fmt, tokenizer, turns: list[dict[str, str]], *, generation_prompt: bool) -> str:
    # bounded in time, and a template's failure names sft.chat_template (PromptFormat.render)
    return fmt.render(tokenizer, turns, generation_prompt=generation_prompt)


def _with_system(fmt, conv: Conversation) -> list[dict[str, str]]:
    turns = conv.as_dicts()
    if fmt.system_prompt is not None and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": fmt.system_prompt})
    return turns


def segments(conv: Conversation, tokenizer, fmt, *, labels: str = "all") -> list[tuple[str, bool]]:
    """The rendered conversation as ``(text, learned)`` pieces; learned pieces are assistant replies + EOS.

    With a chat template, each assistant reply's piece is what rendering the turn adds after the
    generation prompt, up to and including the EOS that ends it (whatever the template writes after
    EOS, such as a newline, is not learned). ``labels="last"`` learns only the final reply (what
    evaluation scores); earlier replies become context.
    """
    eos = tokenizer.eos_token
    if fmt.style == "plain":
        if len(conv.messages) != 2 or conv.messages[0][0] != "user":
            raise TaskFormatError(
                f"example {cut(conv.id)}: sft.prompt_style plain renders one instruction and its response; "
                "conversations need sft.prompt_style: chat"
            )
        return [(PLAIN_PROMPT.format(prompt=conv.messages[0][1]), False), (" " + conv.reference + eos, True)]
    turns = _with_system(fmt, conv)
    full = _render(fmt, tokenizer, turns, generation_prompt=False)
    pieces: list[tuple[str, bool]] = []
    done = 0
    last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant" or (labels == "last" and i != last):
            continue
        prefix = _render(fmt, tokenizer, turns[:i], generation_prompt=True)
        upto = _render(fmt, tokenizer, turns[: i + 1], generation_prompt=False)
        if not (full.startswith(upto) and upto.startswith(prefix)):
            raise TaskFormatError(
                f"example {cut(conv.id)}: the chat template re-renders earlier turns differently as the conversation "
                "grows, so assistant tokens cannot be told apart; give sft.chat_template without that rewriting"
            )
        end = upto.find(turn["content"] + eos, len(prefix))
        if end < 0:
            raise TaskFormatError(
                f"example {cut(conv.id)}: the chat template does not end the assistant turn with EOS {eos!r}"
            )
        end += len(turn["content"]) + len(eos)
        pieces += [(full[done : len(prefix)], False), (full[len(prefix) : end], True)]
        done = end
    if done < len(full):
        pieces.append((full[done:], False))
    return [p for p in pieces if p[0]]


def prompt_text(conv: Conversation, tokenizer, fmt) -> str:
    """What the model is given to write the final reply: everything before it, with the generation prompt."""
    if fmt.style == "plain":
        return segments(conv, tokenizer, fmt)[0][0]
    turns = _with_system(fmt, conv)[:-1]
    return _render(fmt, tokenizer, turns, generation_prompt=True)


def tokenize_conversation(
    conv: Conversation, tokenizer, fmt, max_tokens: int, *, labels: str = "all"
) -> dict[str, list[int]] | None:
    """input_ids / labels / attention_mask with loss on assistant tokens only; None if over ``max_tokens``.

    A conversation too long for ``data.max_sft_tokens`` is first shortened by dropping its earliest
    exchanges (the system turn stays); None when even the final exchange does not fit.
    """
    while True:
        ids: list[int] = []
        target: list[int] = []
        for text, learned in segments(conv, tokenizer, fmt, labels=labels):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            target += piece if learned else [-100] * len(piece)
        if len(ids) <= max_tokens:
            return {"input_ids": ids, "labels": target, "attention_mask": [1] * len(ids)}
        head = 1 if conv.messages[0][0] == "system" else 0
        if len(conv.messages) - head <= 2:
            return None
        conv = Conversation(conv.id, conv.messages[:head] + conv.messages[head + 2 :])


def scrub_conversation(conv: Conversation) -> tuple[Conversation, int]:
    """Every turn with personal data replaced by typed placeholders, and how many were replaced."""

    turns, n = [], 0
    for role, content in conv.messages:
        new, spans = scrub_pii_with_spans(content)
        turns.append((role, new))
        n += len(spans)
    return Conversation(conv.id, tuple(turns)), n


# ---------------------------------------------------------------- scoring


def text_metrics(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """Exact match, token F1 and ROUGE-L F-measure (0-100), each the best over an example's references.

    Exact match and F1 normalize as the SQuAD script does (case, punctuation, articles); ROUGE-L is
    Google's ``rouge-score`` implementation (longest common subsequence of its tokens), the one the
    summarization literature reports.
    """
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    missing = sorted(set(references) - set(predictions))
    if missing:
        raise ValueError(f"no prediction for {len(missing)} example(s), e.g. {missing[:3]}")
    n = max(len(references), 1)
    em = sum(max(exact_match_score(predictions[i], r) for r in refs) for i, refs in references.items())
    f1 = sum(max(f1_score(predictions[i], r) for r in refs) for i, refs in references.items())
    rouge = sum(max(scorer.score(r, predictions[i])["rougeL"].fmeasure for r in refs) for i, refs in references.items())
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n, "rouge_l": 100.0 * rouge / n}


def score_keys(task_format: str) -> tuple[str, ...]:
    """The held-out metrics a stack gets on this format (the gate may use any of them)."""
    return SCORES[task_format] + ("answer_nll",)
