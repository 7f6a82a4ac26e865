"""A closed-book knowledge probe with an entity split: what the domain adapter stored, and whether DAPT could have.

Facts get into weights from a corpus that restates them in several wordings spread over the text, and a
model answers from memory once it has learned that form of task on *other* entities (Allen-Zhu & Li,
"Physics of Language Models: Part 3.1", arXiv:2309.14316). So a probe file (``data.knowledge_probe``)
holds closed-book questions about entities of the DAPT corpus, each marked ``train`` or ``probe``:

* ``train`` questions join the SFT set as closed-book examples, so the task adapter learns to answer
  from memory;
* ``probe`` questions are only asked at test time (notebook 04's grid), about entities no training
  example names: what they score is what the domain adapter stored, not what SFT showed.

Rows are JSON lines ``{"entity", "question", "answers", "split"}`` with an optional ``fact`` (the kind
of fact, for reporting). Notebook 01 checks the file against the cleaned corpus; notebook 02 counts how
often each probe fact was in the blocks DAPT actually trained on (:class:`ExposureCounter`).
"""

from __future__ import annotations

import json
import statistics
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modft_utils import runs
from modft_utils.config import Profile, cut, special_file
from modft_utils.data import readers
from modft_utils.errors import DataError

KEY = "data.knowledge_probe"
SPLITS = ("train", "probe")
_REQUIRED = ("entity", "question", "answers", "split")


@dataclass(frozen=True)
class ProbeQuestion:
    """One closed-book question of the probe file, with the line it came from (for error messages)."""

    entity: str
    question: str
    answers: tuple[str, ...]
    split: str
    fact: str
    line: int


def _row_problem(row: Any) -> str | None:
    """Why a parsed row is not a probe question, naming the field; None when it is one."""
    if not isinstance(row, dict):
        return "expected an object with fields " + ", ".join(repr(k) for k in _REQUIRED)
    missing = [k for k in _REQUIRED if k not in row]
    if missing:
        return "missing field" + ("s " if len(missing) > 1 else " ") + ", ".join(repr(k) for k in missing)
    for k in ("entity", "question"):
        if not isinstance(row[k], str) or not row[k].strip():
            return f"field {k!r} must be a non-empty string"
    answers = row["answers"]
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        return "field 'answers' must be a non-empty string or a list of non-empty strings"
    if row["split"] not in SPLITS:
        return f"field 'split' must be 'train' or 'probe', not {cut(repr(row['split']))}"
    if "fact" in row and not isinstance(row["fact"], str):
        return "field 'fact' must be a string"
    return None


def read_probe(path: Path, key: str = KEY) -> list[ProbeQuestion]:
    """Every question of a probe file; DataError naming ``key``, the file, the line and the field at fault.

    Also refused: an entity with questions in both splits (the split is by entity, or the probe measures
    what SFT showed), and a file without questions of either split.
    """
    if path.is_dir():
        raise DataError(f"{key}: {path} is a folder; give the JSON-lines file")
    if not path.exists():
        raise DataError(f"{key}: {path} does not exist")
    if (kind := special_file(path)) is not None:
        raise DataError(f"{key}: {path} is {kind}, not a regular file")
    out: list[ProbeQuestion] = []
    try:
        for lineno, row in readers.json_lines(path, key):
            if (problem := _row_problem(row)) is not None:
                raise DataError(f"{key}: {path}, line {lineno}: {problem}")
            answers = row["answers"] if isinstance(row["answers"], list) else [row["answers"]]
            out.append(
                ProbeQuestion(
                    row["entity"].strip(),
                    row["question"].strip(),
                    tuple(a.strip() for a in answers),
                    row["split"],
                    row.get("fact", ""),
                    lineno,
                )
            )
    except readers.SourceError as exc:
        raise DataError(str(exc)) from None
    first_line: dict[tuple[str, str], int] = {}
    for q in out:
        first_line.setdefault((q.entity, q.split), q.line)
    both = sorted({e for e, s in first_line if s == "train"} & {e for e, s in first_line if s == "probe"})
    if both:
        e = both[0]
        more = f" (and {len(both) - 1} more)" if len(both) > 1 else ""
        raise DataError(
            f"{key}: {path}: entity {e!r}{more} has questions in both splits (train at line "
            f"{first_line[e, 'train']}, probe at line {first_line[e, 'probe']}); the split is by entity, so a "
            "probe score measures what DAPT stored, not what SFT showed"
        )
    for split in SPLITS:
        if not any(q.split == split for q in out):
            why = (
                "a task adapter learns to answer from memory on the train entities"
                if split == "train"
                else "probe entities are the ones the grid tests"
            )
            raise DataError(f"{key}: {path} has no question with split {split!r}; {why}")
    return out


def _normalized(text: str, profile: Profile) -> str:
    form = profile.data.normalization
    return text if form == "none" else unicodedata.normalize(form, text)


def check_stated(questions: Sequence[ProbeQuestion], docs: Sequence[str], profile: Profile, path: Path) -> None:
    """Refuse questions whose answer no cleaned training document states beside the entity.

    A closed-book answer the corpus never gives cannot be learned from it: such a question measures
    nothing about the domain adapter. The check runs on the corpus as DAPT trains on it (after
    normalization, scrubbing and de-duplication), so a fact the scrubber removed is named too.
    """
    by_entity: dict[str, list[str]] = {}
    for q in questions:
        if q.entity not in by_entity:
            name = _normalized(q.entity, profile)
            by_entity[q.entity] = [d for d in docs if name in d]
    unstated = [
        q for q in questions if not any(_normalized(a, profile) in d for a in q.answers for d in by_entity[q.entity])
    ]
    if unstated:
        shown = "; ".join(
            f"line {q.line} ({q.entity!r}: {cut(q.question, 60)!r} -> {q.answers[0]!r})" for q in unstated[:3]
        )
        more = f" and {len(unstated) - 3} more" if len(unstated) > 3 else ""
        raise DataError(
            f"{KEY}: {path}: {len(unstated)} question(s) whose answer no document of the DAPT training corpus "
            f"states beside its entity: {shown}{more}. Closed-book, only what the corpus teaches can be measured; "
            "fix the answer or the entity, or drop the question"
        )


@dataclass
class KnowledgeProbe:
    """The probe as notebook 01 checked it: train questions for SFT, probe questions for the grid."""

    source: str
    train: list[ProbeQuestion]
    probe: list[ProbeQuestion]
    sft_rows_removed: int = 0  # SFT training rows that named a probe entity (removed, or the split leaks)

    @property
    def probe_entities(self) -> list[str]:
        return list(dict.fromkeys(q.entity for q in self.probe))

    def facts(self) -> list[tuple[str, tuple[str, ...]]]:
        """(entity, answers) of every probe question: what exposure counting looks for."""
        return [(q.entity, q.answers) for q in self.probe]

    def metrics(self) -> dict[str, Any]:
        return {
            "data.knowledge.train_questions": len(self.train),
            "data.knowledge.train_entities": len({q.entity for q in self.train}),
            "data.knowledge.probe_questions": len(self.probe),
            "data.knowledge.probe_entities": len(self.probe_entities),
            "data.knowledge.sft_rows_naming_probe_entities_removed": self.sft_rows_removed,
        }

    def save(self, run_dir: str | Path) -> None:
        run = runs.folder(run_dir)
        state = {"source": self.source, "sft_rows_removed": self.sft_rows_removed}
        state["train"] = [asdict(q) for q in self.train]
        state["probe"] = [asdict(q) for q in self.probe]
        run.knowledge_probe.write_text(json.dumps(state, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def prepare_knowledge_probe(profile: Profile, train_docs: Sequence[str], run_dir: str | Path) -> KnowledgeProbe | None:
    """Read and check ``data.knowledge_probe`` against the cleaned DAPT training documents; None when unset.

    Saved in the run folder (``data/knowledge_probe.json``) for notebook 02's exposure count.
    """
    if profile.data.knowledge_probe is None:
        return None
    path = profile.resolve(profile.data.knowledge_probe)
    questions = read_probe(path)
    check_stated(questions, train_docs, profile, path)
    probe = KnowledgeProbe(
        str(path), [q for q in questions if q.split == "train"], [q for q in questions if q.split == "probe"]
    )
    probe.save(run_dir)
    return probe


def load_knowledge_probe(run_dir: str | Path) -> KnowledgeProbe | None:
    """The probe notebook 01 checked, or None when its profile has no ``data.knowledge_probe``."""
    run = runs.folder(run_dir)
    if not run.knowledge_probe.exists():
        return None
    state = json.loads(run.knowledge_probe.read_text(encoding="utf-8"))

    def questions(rows):
        return [ProbeQuestion(**{**r, "answers": tuple(r["answers"])}) for r in rows]

    return KnowledgeProbe(
        state["source"], questions(state["train"]), questions(state["probe"]), state["sft_rows_removed"]
    )


@dataclass
class ExposureCounter:
    """How many training blocks held each probe fact: the entity and one of its answers in one block.

    Called by the Trainer with the ``input_ids`` of every batch it trains on (``train_adapter``'s
    ``on_batch``), so the count is of the blocks actually trained on, in the order trained, repeats
    included. A fact split across two blocks counts in neither: the count is a lower bound, as a block
    boundary is a boundary for the model too. Under data parallelism each rank counts its own batches.
    """

    tokenizer: Any
    facts: list[tuple[str, tuple[str, ...]]]
    counts: list[int] = field(default_factory=list)
    blocks: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.facts)

    def __call__(self, input_ids) -> None:
        for text in self.tokenizer.batch_decode(input_ids.tolist(), skip_special_tokens=True):
            self.blocks += 1
            for i, (entity, answers) in enumerate(self.facts):
                if entity in text and any(a in text for a in answers):
                    self.counts[i] += 1

    def summary(self) -> dict[str, float]:
        c = self.counts or [0]
        return {
            "min": float(min(c)),
            "median": float(statistics.median(c)),
            "max": float(max(c)),
            "facts_seen": float(sum(1 for x in c if x > 0)),
            "facts": float(len(c)),
            "blocks": float(self.blocks),
        }


def budget_advice(exposures_median: float, needed: int, profile: Profile) -> str | None:
    """A warning naming the profile keys to change when DAPT showed the median probe fact too rarely; None when not."""
    if exposures_median >= needed:
        return None
    t = profile.dapt.train
    factor = needed / max(exposures_median, 0.1)
    return (
        f"DAPT showed the median probe fact {exposures_median:g} times; storing a fact took about {needed} "
        f"exposures in the calibration (dapt.min_fact_exposures). Raise dapt.train.max_steps (now {t.max_steps}) "
        f"or dapt.train.batch_size (now {t.batch_size}) about {factor:.0f}x, or make the facts a larger share of "
        "data.dapt.train_file (restate each in more wordings): at this budget the closed-book probe cannot show "
        "what the domain adapter knows."
    )
