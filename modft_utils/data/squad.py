"""SQuAD as it really is: two file layouts, answers that do not always sit where they say, and the
official metric.

Reading. SQuAD reaches the workbook in three shapes, all turned into the Hugging Face row layout
(``id``, ``title``, ``context``, ``question``, ``answers: {"text": [...], "answer_start": [...]}``):

* the original nested JSON (``train-v1.1.json``, ``dev-v2.0.json``: ``data -> paragraphs -> qas``), where
  v2.0 questions carry ``is_impossible`` (kept on the row) and ``plausible_answers`` (dropped, as the hub
  drops them);
* hub rows, as ``datasets.load_dataset("squad")`` yields them;
* the same rows saved locally as JSON lines or a JSON list (``data/sample/squad/*.jsonl``).

A file that cannot be used raises :class:`SquadFormatError` naming the file and the line (or the row, or
the ``data[i].paragraphs[j].qas[k]`` path) at fault.

Validating. :func:`rows_to_examples` checks every answer against its context: ``context[start:start +
len(text)] == text``. Scraped and hand-edited copies often carry starts that are off by a few characters
(a stripped leading space, a normalised quote); the nearest occurrence within ``repair_window`` characters
is taken instead. Answers that cannot be found are dropped, and so is an example left without any. Every
such decision is counted in a :class:`SquadReport`, so the notebook can show what cleaning did.

Scoring. :func:`normalize_answer`, :func:`exact_match_score`, :func:`f1_score` and :func:`squad_metrics`
reproduce the official evaluation scripts: the best score over all reference answers, averaged over
questions and reported in percent. The v1.1 and v2.0 scripts differ only where an answer normalizes to
nothing (``"the"``, ``""``), so ``version`` picks the rule of the data being scored (see :func:`f1_score`).
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from modft_utils.config import cut, short, special_file
from modft_utils.errors import ModftError

__all__ = [
    "SquadFormatError",
    "QAExample",
    "SquadReport",
    "read_squad_file",
    "rows_to_examples",
    "locate_answer",
    "subset",
    "split_by_title",
    "window_context",
    "normalize_answer",
    "exact_match_score",
    "f1_score",
    "squad_metrics",
    "reference_answers",
    "VERSIONS",
]


class SquadFormatError(ModftError, ValueError):
    """A SQuAD file or row that cannot be used; the message names the file and the line or row."""


@dataclass(frozen=True)
class QAExample:
    """One question with every reference answer; evaluation takes the best score over ``answers``."""

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]
    is_impossible: bool = False


@dataclass
class SquadReport:
    """What :func:`rows_to_examples` did to the rows it was given."""

    rows_in: int = 0
    rows_out: int = 0
    repaired_starts: int = 0  # answers whose start was moved to the nearby true occurrence
    dropped_answers: int = 0  # individual answers not found near their start
    dropped_bad_answer: int = 0  # examples dropped because no answer survived
    duplicate_ids: int = 0  # later rows reusing an id (the first is kept)
    unanswerable_kept: int = 0
    unanswerable_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

_TEXT_FIELDS = ("title", "context", "question")


def _canonical_answers(answers: Any, where: str) -> tuple[list[str], list[int]]:
    """Answers as (texts, starts) from the hub's dict of lists or the original list of dicts."""
    if isinstance(answers, Mapping):
        if "text" not in answers or "answer_start" not in answers:
            raise SquadFormatError(f"{where}: 'answers' needs 'text' and 'answer_start'")
        texts, starts = answers["text"], answers["answer_start"]
    elif isinstance(answers, list):
        texts, starts = [], []
        for k, a in enumerate(answers):
            if not isinstance(a, Mapping) or "text" not in a or "answer_start" not in a:
                raise SquadFormatError(f"{where}: answers[{k}] needs 'text' and 'answer_start'")
            texts.append(a["text"])
            starts.append(a["answer_start"])
    else:
        raise SquadFormatError(f"{where}: 'answers' must be an object or a list, not {type(answers).__name__}")
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise SquadFormatError(f"{where}: 'answers' text and answer_start must be lists of equal length")
    for t, s in zip(texts, starts):
        if not isinstance(t, str):
            raise SquadFormatError(f"{where}: answer text {short(t)} is not a string")
        # bool is an int subclass; a true/false start is a broken export, not position 0 or 1.
        if not isinstance(s, int) or isinstance(s, bool):
            raise SquadFormatError(f"{where}: answer_start {short(s)} is not an integer")
    return list(texts), list(starts)


def _check_row(row: Any, where: str) -> dict[str, Any]:
    """Validate one hub-layout row and return it in canonical form (answers as a dict of lists)."""
    if not isinstance(row, Mapping):
        raise SquadFormatError(f"{where}: expected an object, got {type(row).__name__}")
    missing = [k for k in ("id", *_TEXT_FIELDS, "answers") if k not in row]
    if missing:
        raise SquadFormatError(f"{where}: missing field(s) {', '.join(repr(k) for k in missing)}")
    qid = row["id"]
    if isinstance(qid, int) and not isinstance(qid, bool):
        qid = str(qid)  # a loader may infer all-digit ids as integers
    if not isinstance(qid, str) or not qid:
        raise SquadFormatError(f"{where}: 'id' must be a non-empty string")
    for k in _TEXT_FIELDS:
        if not isinstance(row[k], str):
            raise SquadFormatError(f"{where}: {k!r} must be a string, not {type(row[k]).__name__}")
    texts, starts = _canonical_answers(row["answers"], where)
    out = {
        "id": qid,
        "title": row["title"],
        "context": row["context"],
        "question": row["question"],
        "answers": {"text": texts, "answer_start": starts},
    }
    if "is_impossible" in row:
        if not isinstance(row["is_impossible"], bool):
            raise SquadFormatError(f"{where}: 'is_impossible' must be true or false")
        out["is_impossible"] = row["is_impossible"]
    return out


def _flatten_original(doc: Mapping[str, Any], path: Path) -> list[dict[str, Any]]:
    """The original ``data -> paragraphs -> qas`` layout (v1.1 or v2.0) as hub-layout rows."""
    data = doc["data"]
    if not isinstance(data, list):
        raise SquadFormatError(f"{path}: 'data' must be a list")
    rows = []
    for ai, article in enumerate(data):
        where = f"{path}: data[{ai}]"
        if not isinstance(article, Mapping) or "paragraphs" not in article or "title" not in article:
            raise SquadFormatError(f"{where}: an article needs 'title' and 'paragraphs'")
        # `"paragraphs": 5` or `"qas": null` is not iterable (a TypeError), and a string would be
        # iterated character by character: both must be lists.
        if not isinstance(article["paragraphs"], list):
            raise SquadFormatError(
                f"{where}.paragraphs: must be a list of paragraphs, not {type(article['paragraphs']).__name__}"
            )
        for pi, para in enumerate(article["paragraphs"]):
            pwhere = f"{where}.paragraphs[{pi}]"
            if not isinstance(para, Mapping) or "context" not in para or "qas" not in para:
                raise SquadFormatError(f"{pwhere}: a paragraph needs 'context' and 'qas'")
            if not isinstance(para["qas"], list):
                raise SquadFormatError(f"{pwhere}.qas: must be a list of questions, not {type(para['qas']).__name__}")
            for qi, qa in enumerate(para["qas"]):
                qwhere = f"{pwhere}.qas[{qi}]"
                if not isinstance(qa, Mapping):
                    raise SquadFormatError(f"{qwhere}: expected an object")
                missing = [k for k in ("id", "question", "answers") if k not in qa]
                if missing:
                    raise SquadFormatError(f"{qwhere}: missing field(s) {', '.join(repr(k) for k in missing)}")
                row: dict[str, Any] = {
                    "id": qa["id"],
                    "title": article["title"],
                    "context": para["context"],
                    "question": qa["question"],
                    "answers": qa["answers"],
                }
                if "is_impossible" in qa:
                    row["is_impossible"] = qa["is_impossible"]
                rows.append(_check_row(row, qwhere))
    return rows


def _loads(text: str, path: Path, line: int | None = None) -> Any:
    """``json.loads`` whose failures name the file and line: malformed, nested too deeply, a huge int."""
    at = f"{path}: line {line}" if line is not None else str(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise  # the callers name the line and column (and try JSON lines on "Extra data")
    except RecursionError:  # json recurses once per [ or {: 100,000 of them overflow the stack
        raise SquadFormatError(f"{at}: malformed JSON (nested too deeply)") from None
    except ValueError as e:  # an integer of more than 4,300 digits
        raise SquadFormatError(f"{at}: malformed JSON ({cut(str(e))})") from None


def _parse_jsonl(text: str, path: Path) -> list[dict[str, Any]]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = _loads(line, path, lineno)
        except json.JSONDecodeError as e:
            raise SquadFormatError(f"{path}: line {lineno} column {e.colno}: malformed JSON ({e.msg})") from None
        rows.append(_check_row(row, f"{path}: line {lineno}"))
    return rows


def read_squad_file(path: str | Path) -> list[dict[str, Any]]:
    """Read a SQuAD file in any of its layouts and return hub-layout rows.

    Detects the original nested layout (v1.1 or v2.0; v2 rows keep ``is_impossible``), JSON lines
    (``.jsonl``, or a ``.json`` file that turns out to hold one object per line) and a JSON list of rows.
    Raises :class:`SquadFormatError` naming the file and the line, row or ``data[..]`` path at fault for
    invalid UTF-8, malformed JSON and missing or mistyped fields.
    """
    path = Path(path)
    if (kind := special_file(path)) is not None:  # read_bytes on a FIFO blocks until someone writes
        raise SquadFormatError(f"{path} is {kind}, not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SquadFormatError(f"{path}: cannot be read ({e.strerror or cut(str(e))})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise SquadFormatError(f"{path}: line {line}: invalid UTF-8 at byte {e.start}") from None
    text = text.removeprefix("\ufeff")  # editors on Windows add a BOM that json rejects
    if path.suffix == ".jsonl":
        return _parse_jsonl(text, path)
    try:
        doc = _loads(text, path)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            return _parse_jsonl(text, path)
        raise SquadFormatError(f"{path}: line {e.lineno} column {e.colno}: malformed JSON ({e.msg})") from None
    if isinstance(doc, Mapping) and "data" in doc:
        return _flatten_original(doc, path)
    if isinstance(doc, list):
        return [_check_row(row, f"{path}: row {i}") for i, row in enumerate(doc)]
    raise SquadFormatError(f"{path}: neither the original SQuAD layout (an object with 'data') nor a list of rows")


# --------------------------------------------------------------------------------------------------
# Validating
# --------------------------------------------------------------------------------------------------


def locate_answer(context: str, text: str, start: int, window: int) -> int | None:
    """Where ``text`` really starts: ``start`` if it is there, else the nearest occurrence at most
    ``window`` characters away (earlier wins a tie), else ``None``."""
    if not text:
        return None
    if start >= 0 and context.startswith(text, start):
        return start
    best: int | None = None
    pos = context.find(text, max(0, start - window))
    while pos != -1 and pos <= start + window:
        if best is None or abs(pos - start) < abs(best - start):
            best = pos
        pos = context.find(text, pos + 1)
    return best


def rows_to_examples(
    rows: Iterable[Mapping[str, Any]],
    *,
    unanswerable: Literal["drop", "keep"] = "drop",
    repair_window: int = 20,
    source: str = "",
) -> tuple[list[QAExample], SquadReport]:
    """Validate hub-layout rows into :class:`QAExample` objects and report every repair and drop.

    A row is unanswerable when it says ``is_impossible`` or, lacking that flag (hub ``squad_v2`` rows),
    when it has no answers. Duplicate ids keep their first row. A row missing a field raises
    :class:`SquadFormatError` naming ``source`` and the row index.
    """
    if unanswerable not in ("drop", "keep"):
        raise ValueError(f"unanswerable must be 'drop' or 'keep', not {unanswerable!r}")
    if repair_window < 0:
        raise ValueError("repair_window must be >= 0")
    report = SquadReport()
    seen: set[str] = set()
    out: list[QAExample] = []
    for i, raw in enumerate(rows):
        report.rows_in += 1
        row = _check_row(raw, f"{source or '<rows>'}: row {i}")
        if row["id"] in seen:
            report.duplicate_ids += 1
            continue
        seen.add(row["id"])
        texts, starts = row["answers"]["text"], row["answers"]["answer_start"]
        impossible = row.get("is_impossible", not texts)
        common = {"id": row["id"], "title": row["title"], "context": row["context"], "question": row["question"]}
        if impossible:
            if unanswerable == "keep":
                out.append(QAExample(**common, answers=(), answer_starts=(), is_impossible=True))
                report.unanswerable_kept += 1
            else:
                report.unanswerable_dropped += 1
            continue
        good_texts: list[str] = []
        good_starts: list[int] = []
        for text, start in zip(texts, starts):
            found = locate_answer(row["context"], text, start, repair_window)
            if found is None:
                report.dropped_answers += 1
                continue
            if found != start:
                report.repaired_starts += 1
            good_texts.append(text)
            good_starts.append(found)
        if not good_texts:
            report.dropped_bad_answer += 1
            continue
        out.append(QAExample(**common, answers=tuple(good_texts), answer_starts=tuple(good_starts)))
    report.rows_out = len(out)
    return out, report


def reference_answers(examples: Iterable[QAExample]) -> dict[str, list[str]]:
    """``{id: [reference answers]}`` as :func:`squad_metrics` wants them."""
    return {ex.id: list(ex.answers) for ex in examples}


# --------------------------------------------------------------------------------------------------
# Sampling and splitting
# --------------------------------------------------------------------------------------------------


def subset(examples: Sequence[QAExample], n: int, seed: int) -> list[QAExample]:
    """``n`` examples drawn with ``random.Random(seed)``, in their original order (all if ``n`` >= len)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    if n >= len(examples):
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def split_by_title(
    examples: Sequence[QAExample], eval_fraction: float, seed: int
) -> tuple[list[QAExample], list[QAExample]]:
    """Split into (train, eval) so that no title and no context appears on both sides.

    Questions about one article share its wording, so splitting by question would leak; titles that
    share a context (the same paragraph filed under two titles) are grouped too. Whole groups are drawn
    in a seeded order until ``eval_fraction`` of the examples are in eval; both sides keep the input order.
    """
    if not 0 < eval_fraction < 1:
        raise ValueError("eval_fraction must be between 0 and 1")
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for ex in examples:
        a, b = find(("title", ex.title)), find(("context", ex.context))
        if a != b:
            parent[b] = a
    groups: dict[tuple[str, str], list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(find(("title", ex.title)), []).append(i)
    if len(groups) < 2:
        raise ValueError("need examples from at least two titles to split by title")
    order = list(groups)
    random.Random(seed).shuffle(order)
    target = eval_fraction * len(examples)
    eval_idx: list[int] = []
    for n_taken, key in enumerate(order):
        if len(eval_idx) >= target or n_taken == len(order) - 1:
            break  # the last group always stays in train, so neither side is empty
        eval_idx.extend(groups[key])
    in_eval = set(eval_idx)
    train = [ex for i, ex in enumerate(examples) if i not in in_eval]
    held = [ex for i, ex in enumerate(examples) if i in in_eval]
    return train, held


def window_context(context: str, answer_start: int, answer: str, max_chars: int) -> tuple[str, int, bool]:
    """Cut a context longer than ``max_chars`` to a window around its answer.

    The window is centred on the answer, then shrunk to whole words at both ends without ever
    removing a character of the answer. Returns ``(new_context, new_answer_start, was_cut)``.
    """
    if answer_start < 0 or context[answer_start : answer_start + len(answer)] != answer:
        raise ValueError(f"answer {short(answer)} is not at {answer_start} in the context")
    if len(context) <= max_chars:
        return context, answer_start, False
    if len(answer) > max_chars:
        raise ValueError(f"the answer alone ({len(answer)} chars) is longer than max_chars={max_chars}")
    end = answer_start + len(answer)
    lo = max(0, answer_start - (max_chars - len(answer)) // 2)
    hi = min(len(context), lo + max_chars)
    lo = hi - max_chars
    if lo > 0 and not context[lo - 1].isspace():
        cut = next((k for k in range(lo, answer_start) if context[k].isspace()), None)
        if cut is not None:
            lo = cut + 1
    if hi < len(context) and not context[hi].isspace():
        cut = next((k for k in range(hi - 1, end - 1, -1) if context[k].isspace()), None)
        if cut is not None:
            hi = cut
    while lo < answer_start and context[lo].isspace():
        lo += 1
    while hi > end and context[hi - 1].isspace():
        hi -= 1
    return context[lo:hi], answer_start - lo, True


# --------------------------------------------------------------------------------------------------
# Official SQuAD metric (v1.1 and v2.0 scripts)
# --------------------------------------------------------------------------------------------------

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
SquadVersion = Literal["v1.1", "v2.0"]
VERSIONS: tuple[str, ...] = ("v1.1", "v2.0")


def _check_version(version: str) -> None:
    if version not in VERSIONS:
        raise ValueError(f"SQuAD version {version!r}: expected 'v1.1' or 'v2.0' (the official script to follow)")


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace (official script)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    """1.0 when both normalize to the same string (the same in both scripts), else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str, *, version: SquadVersion = "v1.1") -> float:
    """Token-overlap F1 of the normalized answers, as the official script of ``version`` computes it.

    The scripts differ when an answer normalizes to nothing: v1.1 finds no common token and scores
    0 (prediction "the the the" against "the": F1 0, though exact match is 1); v2.0, whose empty
    reference means "unanswerable", scores 1 when both are empty and 0 when only one is.
    """
    _check_version(version)
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(ground_truth).split()
    if version == "v2.0" and (not pred or not gold):
        return float(pred == gold)
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], *, version: SquadVersion = "v1.1"
) -> dict[str, float | int]:
    """Exact match and F1 in percent over every question in ``references``, by the ``version`` script.

    Each question scores the best over its reference answers; predictions for unknown ids are ignored,
    as both official scripts do. A question with no prediction scores 0 and is counted in ``missing``
    (the v2.0 script leaves it out of the average instead; the count says when that matters).

    ``version="v1.1"`` (the default; the workbook's SQuAD) follows evaluate-v1.1.py. ``"v2.0"`` follows
    evaluate-v2.0.py, for data with unanswerable questions: references that normalize to nothing are
    dropped, and a question left without any (unanswerable) is scored against the empty answer.
    """
    _check_version(version)
    em_total = f1_total = 0.0
    missing = 0
    for qid, golds in references.items():
        if qid not in predictions:
            missing += 1
            continue
        pred = predictions[qid]
        golds = list(golds)
        if version == "v2.0":
            golds = [g for g in golds if normalize_answer(g)]
        golds = golds or [""]
        em_total += max(exact_match_score(pred, g) for g in golds)
        f1_total += max(f1_score(pred, g, version=version) for g in golds)
    count = len(references)
    return {
        "exact_match": 100.0 * em_total / count if count else 0.0,
        "f1": 100.0 * f1_total / count if count else 0.0,
        "count": count,
        "missing": missing,
    }
