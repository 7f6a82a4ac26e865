"""Data preparation for both adapters: load, clean, scrub, split, tokenize, pack.

The same loaders read the hub datasets (``wikitext``/``wikitext-2-raw-v1``, ``squad``) and the
local sample files shipped in the same row format; everything after loading is one code path.
Prepared data is saved in the run folder so later notebooks read exactly what 01 produced.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import readers, squad, tasks
from .clean import CleanConfig, StepReport, clean_corpus, clean_wikitext, dedup_key, report_table  # noqa: F401
from .config import CorpusSpec, Profile
from .errors import DataError
from .pii import placeholder, remap_span, scrub_pii, scrub_pii_with_spans  # noqa: F401  (public: modft_utils.data.scrub_pii)
from .prompts import PromptFormat, chat_template, prompt_format

# ---------------------------------------------------------------- loading


def load_sft_rows(profile: Profile) -> dict[str, Any]:
    """The SFT set's ``train`` and ``validation`` rows: hub tables, or local files read as validation reads them.

    Local files go through :func:`squad.read_squad_file`, as ``modft validate`` reads them: the
    original nested SQuAD layout, JSON lines or a JSON list (the ``datasets`` JSON builder would take
    an original file as one row, and notebook 01 then failed on a file validate had passed).
    """
    spec = profile.data.sft
    if spec.hub_name:
        return load_rows(spec, profile)
    return {
        split: read_sft_file(profile.resolve(getattr(spec, f"{split}_file")), f"data.sft.{split}_file")
        for split in ("train", "validation")
    }


def load_rows(spec: CorpusSpec, profile: Profile) -> dict[str, Any]:
    """The domain corpus's ``train`` and ``validation`` splits as ``datasets`` tables with a ``text`` column.

    Hub datasets as published; local sources through :mod:`modft_utils.readers`, the same readers
    ``modft validate`` uses.
    """
    from datasets import load_dataset

    if spec.hub_name:
        try:
            ds = load_dataset(spec.hub_name, spec.hub_config)
        except Exception as exc:  # the hub client raises many types; name the dataset either way
            raise DataError(f"could not load hub dataset {spec.hub_name!r} ({spec.hub_config}): {exc}") from exc
        return {"train": ds["train"], "validation": ds["validation"]}
    return {split: readers.read(source, spec.text_column) for split, source in corpus_sources(profile).items()}


def describe_sources(profile: Profile) -> list[str]:
    """One line per split and dataset: which reader takes it (what notebook 01 shows)."""
    lines = []
    dapt, sft = profile.data.dapt, profile.data.sft
    if dapt.hub_name:
        lines.append(f"DAPT: hub dataset {dapt.hub_name} ({dapt.hub_config}), wikitext lines")
    else:
        lines += [f"DAPT {split}: {source.describe()}" for split, source in corpus_sources(profile).items()]
    reader = {
        "squad": "SQuAD reader (original nested layout, JSON lines or a JSON list)",
        "prompt_response": f"prompt_response reader (prompt {sft.fields.prompt!r}, input {sft.fields.input!r}, "
        f"response {sft.fields.response!r})",
        "messages": f"messages reader (turns in {sft.messages_field!r}, role/content or ShareGPT from/value)",
    }[sft.format]
    if sft.hub_name:
        lines.append(f"SFT: hub dataset {sft.hub_name}, {reader}")
    else:
        lines += [
            f"SFT {split}: {reader}: {profile.resolve(getattr(sft, f'{split}_file'))}"
            for split in ("train", "validation")
        ]
    return lines


def corpus_sources(profile: Profile) -> dict[str, readers.CorpusSource]:
    """The DAPT corpus's local sources per split, resolved and typed (files, format, row kind)."""
    spec = profile.data.dapt
    base = Path(profile.source).parent if profile.source else Path.cwd()
    try:
        return {
            split: readers.resolve(getattr(spec, f"{split}_file"), base, f"data.dapt.{split}_file", spec.format)
            for split in ("train", "validation")
        }
    except readers.SourceError as exc:
        raise DataError(str(exc)) from None


# ---------------------------------------------------------------- DAPT


def pack(token_lists: list[list[int]], block_size: int, eos_id: int) -> list[list[int]]:
    """Concatenate documents (each ended by EOS) and cut fixed blocks: no padding at all.

    The tail shorter than one block is dropped; documents may straddle blocks, as in GPT-style
    pretraining, and EOS marks where one ends.
    """
    stream: list[int] = []
    for ids in token_lists:
        stream.extend(ids)
        stream.append(eos_id)
    n = len(stream) // block_size
    return [stream[i * block_size : (i + 1) * block_size] for i in range(n)]


@dataclass
class CleanCorpus:
    """The DAPT corpus after cleaning and scrubbing, before tokenization."""

    train_docs: list[str]
    eval_docs: list[str]
    reports: dict[str, list[StepReport]]
    pii_counts: dict[str, int]
    leaked_eval_docs: int

    @property
    def pii_replacements(self) -> int:
        return sum(self.pii_counts.values())


@dataclass
class DaptData:
    train_docs: list[str]
    eval_docs: list[str]
    train_blocks: Any  # datasets.Dataset with input_ids, labels
    eval_blocks: Any
    reports: dict[str, list[StepReport]]
    pii_replacements: int
    leaked_eval_docs: int

    @property
    def train_tokens(self) -> int:
        return len(self.train_blocks) * len(self.train_blocks[0]["input_ids"]) if len(self.train_blocks) else 0


def _tokenize_docs(docs: list[str], tokenizer, progress: bool) -> list[list[int]]:
    from datasets import Dataset

    ds = Dataset.from_dict({"text": docs})
    ds = ds.map(
        lambda b: {"ids": tokenizer(b["text"], add_special_tokens=False)["input_ids"]},
        batched=True,
        batch_size=256,
        remove_columns=["text"],
        desc="tokenizing",
    )
    return ds["ids"]


def _blocks_dataset(blocks: list[list[int]]):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def _text_rows(table, batch_size: int = 10_000):
    """The ``text`` column, streamed in batches: a large hub split is never one Python list."""
    for batch in table.iter(batch_size=batch_size):
        yield from batch["text"]


def clean_dapt(profile: Profile, *, progress: bool = True) -> CleanCorpus:
    """Clean, scrub and de-duplicate the domain corpus (both splits), reporting every step."""
    cfg = CleanConfig(
        normalization=None if profile.data.normalization == "none" else profile.data.normalization,
        section_headings=profile.data.section_headings,
        min_chars=profile.data.min_doc_chars,
        near_dup_threshold=profile.data.near_dup_threshold,
    )
    counter = Counter()

    def scrub(text: str) -> tuple[str, int]:
        new, spans = scrub_pii_with_spans(text)
        counter.update(s.kind for s in spans)
        return new, len(spans)

    try:
        rows = load_rows(profile.data.dapt, profile)
    except readers.SourceError as exc:
        raise DataError(str(exc)) from None
    sources = corpus_sources(profile) if not profile.data.dapt.hub_name else {}
    docs, reports = {}, {}
    for split in ("train", "validation"):
        if "text" not in rows[split].column_names:
            raise DataError(f"data.dapt {split}: rows have no 'text' field (fields: {rows[split].column_names})")
        if len(rows[split]) == 0:
            raise DataError(f"data.dapt {split}: the split has no rows")
        try:
            docs[split], reports[split] = clean_corpus(
                _text_rows(rows[split]),
                cfg,
                scrub if profile.data.scrub_pii else None,
                progress=progress,
                total_rows=len(rows[split]),
                documents=split in sources and sources[split].documents,
            )
        except ValueError as exc:
            raise DataError(f"data.dapt {split}: {exc}") from exc
    # A held-out document that also appears in training would flatter the perplexity.
    seen = {dedup_key(d) for d in docs["train"]}
    eval_docs = [d for d in docs["validation"] if dedup_key(d) not in seen]
    if not eval_docs:
        raise DataError("data.dapt validation: no held-out document left after removing copies of training documents")
    return CleanCorpus(docs["train"], eval_docs, reports, dict(counter), len(docs["validation"]) - len(eval_docs))


def prepare_dapt(
    profile: Profile, tokenizer, run_dir: str | Path, cleaned: CleanCorpus | None = None, *, progress: bool = True
) -> DaptData:
    """Tokenize and pack the cleaned corpus (cleaning it first if not given); save the blocks in the run folder."""
    if cleaned is None:
        cleaned = clean_dapt(profile, progress=progress)
    block = profile.data.block_size
    train_blocks = pack(_tokenize_docs(cleaned.train_docs, tokenizer, progress), block, tokenizer.eos_token_id)
    eval_blocks = pack(_tokenize_docs(cleaned.eval_docs, tokenizer, progress), block, tokenizer.eos_token_id)
    if not train_blocks or not eval_blocks:
        raise DataError(f"data.dapt: fewer tokens than one block of {block}; lower data.block_size")
    data = DaptData(
        train_docs=cleaned.train_docs,
        eval_docs=cleaned.eval_docs,
        train_blocks=_blocks_dataset(train_blocks),
        eval_blocks=_blocks_dataset(eval_blocks),
        reports=cleaned.reports,
        pii_replacements=cleaned.pii_replacements,
        leaked_eval_docs=cleaned.leaked_eval_docs,
    )
    out = Path(run_dir) / "data"
    data.train_blocks.save_to_disk(str(out / "dapt_train"))
    data.eval_blocks.save_to_disk(str(out / "dapt_eval"))
    (out / "dapt_pii_counts.json").write_text(json.dumps(cleaned.pii_counts, indent=2) + "\n")
    return data


def load_dapt_blocks(run_dir: str | Path) -> tuple[Any, Any]:
    """The packed (train, eval) blocks notebook 01 saved."""
    out = Path(run_dir) / "data"
    return _load_saved(out / "dapt_train", "01_data_prep"), _load_saved(out / "dapt_eval", "01_data_prep")


def _require(path: Path, notebook: str) -> None:
    if not path.exists():
        raise DataError(f"{path} is missing: run notebook {notebook} for this run folder first")


def _load_saved(path: Path, notebook: str):
    """A dataset ``notebook`` saved with ``save_to_disk``; DataError naming it if missing or damaged."""
    from datasets import load_from_disk

    _require(path, notebook)
    try:
        return load_from_disk(str(path))
    # pyarrow raises OSError for a truncated .arrow file and ArrowInvalid (a ValueError) for a garbled
    # one; datasets raises FileNotFoundError when a shard listed in its state file is gone.
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path} is damaged ({type(exc).__name__}: {exc}): run notebook {notebook} for this run folder again"
        ) from None


def clean_metrics(reports: dict[str, list[StepReport]]) -> dict[str, int]:
    """``data.clean.<split>.<step>.{rows,chars}_{in,out}`` for metrics.json."""
    out = {}
    for split, rs in reports.items():
        for r in rs:
            key = f"data.clean.{split}.{r.step}"
            out.update(
                {
                    f"{key}.rows_in": r.rows_in,
                    f"{key}.rows_out": r.rows_out,
                    f"{key}.chars_in": r.chars_in,
                    f"{key}.chars_out": r.chars_out,
                }
            )
    return out


# ---------------------------------------------------------------- SFT


@dataclass
class SftReport:
    """What notebook 01 did to the SFT set: per split what was read and kept, then what each step dropped."""

    format: str = "squad"
    loaded: dict[str, Any] = field(default_factory=dict)
    pii_replacements: int = 0
    answers_rewritten: int = 0
    answers_dropped_pii: int = 0
    contexts_cut: int = 0
    overlapping_titles_removed: int = 0
    dropped_too_long: int = 0  # conversations whose final exchange alone exceeds data.max_sft_tokens
    train_examples: int = 0
    eval_examples: int = 0

    def metrics(self) -> dict[str, Any]:
        """Per-format counts for metrics.json: ``data.sft.<format>.<split>.<count>`` and what later steps dropped."""
        out: dict[str, Any] = {
            f"data.sft.{self.format}.{split}.{k}": v for split, counts in self.loaded.items() for k, v in counts.items()
        }
        prefix = f"data.sft.{self.format}"
        out.update(
            {
                f"{prefix}.held_out_overlapping_removed": self.overlapping_titles_removed,
                f"{prefix}.dropped_pii_answer": self.answers_dropped_pii,
                f"{prefix}.dropped_too_long": self.dropped_too_long,
                f"{prefix}.train_examples": self.train_examples,
                f"{prefix}.eval_examples": self.eval_examples,
            }
        )
        return out

    def table(self) -> str:
        """Rows in and out per split, and every drop with its reason: what notebook 01 prints."""
        lines = [f"SFT format: {self.format}"]
        for split, counts in self.loaded.items():
            kept = counts.get("examples", counts.get("rows_out"))
            drops = ", ".join(
                f"{k} {v}" for k, v in counts.items() if k not in ("rows_in", "rows_out", "examples") and v
            )
            lines.append(
                f"  {split:<10} read {counts['rows_in']:>6}  usable {kept:>6}" + (f"  ({drops})" if drops else "")
            )
        lines.append(f"  held-out examples removed as overlapping training: {self.overlapping_titles_removed}")
        lines.append(
            f"  dropped: PII answer {self.answers_dropped_pii}, too long {self.dropped_too_long}; "
            f"contexts cut around the answer {self.contexts_cut}; PII replaced {self.pii_replacements}"
        )
        lines.append(f"  -> train {self.train_examples}, held-out {self.eval_examples}")
        return "\n".join(lines)


def scrub_example(ex: squad.QAExample) -> tuple[squad.QAExample | None, int, bool]:
    """Scrub context, question and answers; re-locate every answer in the scrubbed context.

    An answer that is (or contains) personal data is rewritten to its scrubbed form when that form
    sits at the re-located position, otherwise dropped. Returns (example or None, replacements,
    whether an answer was rewritten).
    """
    context, spans = scrub_pii_with_spans(ex.context)
    question, qspans = scrub_pii_with_spans(ex.question)
    if not spans and not qspans:
        return ex, 0, False
    answers, starts, rewritten = [], [], False
    for text, start in zip(ex.answers, ex.answer_starts):
        moved = remap_span(spans, start, start + len(text))
        if moved is not None:
            answers.append(text)
            starts.append(moved[0])
            continue
        # The answer is (or contains) personal data: its scrubbed form must sit where the
        # scrubbed answer now starts, i.e. after the shift of every span that ends before it.
        new_text = scrub_pii(text)
        new_start = start + sum(len(placeholder(s.kind)) - (s.end - s.start) for s in spans if s.end <= start)
        if context[new_start : new_start + len(new_text)] == new_text:
            answers.append(new_text)
            starts.append(new_start)
            rewritten = True
    n = len(spans) + len(qspans)
    if not answers:
        return None, n, False
    return (
        squad.QAExample(
            id=ex.id,
            title=ex.title,
            context=context,
            question=question,
            answers=tuple(answers),
            answer_starts=tuple(starts),
            is_impossible=ex.is_impossible,
        ),
        n,
        rewritten,
    )


def tokenize_example(
    ex: squad.QAExample, tokenizer, max_tokens: int, fmt: PromptFormat | None = None
) -> tuple[dict[str, Any], bool]:
    """Prompt + first answer + EOS, loss on the answer only; cut the context around the answer if too long.

    ``fmt`` defaults to the plain prompt (``sft.prompt_style: plain``).
    """
    fmt = fmt or PromptFormat()
    context, cut = ex.context, False
    answer = ex.answers[0]
    answer_ids = tokenizer(fmt.answer_prefix + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    max_chars = len(context)
    while True:
        prompt_ids = tokenizer(fmt.prompt(tokenizer, context, ex.question), add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + len(answer_ids) <= max_tokens:
            break
        over = len(prompt_ids) + len(answer_ids) - max_tokens
        max_chars = max(len(answer) + 1, max_chars - max(16, int(over * 3.5)))
        if max_chars <= len(answer) + 1 and cut:
            raise DataError(f"SQuAD example {ex.id}: question and answer alone exceed data.max_sft_tokens={max_tokens}")
        context, cut = squad.window_context(ex.context, ex.answer_starts[0], answer, max_chars)[0], True
    ids = prompt_ids + answer_ids
    labels = [-100] * len(prompt_ids) + answer_ids
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}, cut


@dataclass
class SftData:
    train: Any  # datasets.Dataset: input_ids, labels, attention_mask
    eval_tokenized: Any
    eval_examples: list[dict[str, Any]]
    report: SftReport


def _eval_record(ex: squad.QAExample, tokenizer, fmt: PromptFormat, version: str) -> dict[str, Any]:
    return {
        "id": ex.id,
        "title": ex.title,
        "context": ex.context,
        "question": ex.question,
        "answers": list(ex.answers),
        "prompt": fmt.prompt(tokenizer, ex.context, ex.question),
        "squad_version": version,
        "format": "squad",
    }


def prepare_sft(profile: Profile, tokenizer, run_dir: str | Path, *, progress: bool = True) -> SftData:
    """Validate, scrub, subset and tokenize the QA set; save train and eval sets in the run folder."""
    from datasets import Dataset
    from tqdm.auto import tqdm

    fmt = prompt_format(profile, tokenizer)  # a chat profile on a base without a template stops here
    if profile.data.sft.format != "squad":
        return _prepare_conversations(profile, tokenizer, fmt, run_dir, progress=progress)
    rows = load_sft_rows(profile)
    spec = profile.data.sft
    report = SftReport()
    examples = {}
    for split in ("train", "validation"):
        source = spec.hub_name or str(profile.resolve(getattr(spec, f"{split}_file")))
        exs, rep = squad.rows_to_examples(
            rows[split], unanswerable=profile.data.unanswerable, source=f"{source} [{split}]"
        )
        check_sft_examples(rep, len(exs), profile, f"data.sft {split}", Path(source))
        report.loaded[split] = rep.as_dict()
        examples[split] = exs
    train_titles = {e.title for e in examples["train"]} | {e.context for e in examples["train"]}
    eval_pool = [e for e in examples["validation"] if e.title not in train_titles and e.context not in train_titles]
    report.overlapping_titles_removed = len(examples["validation"]) - len(eval_pool)
    train = squad.subset(examples["train"], profile.data.sft_subset_size, profile.seed)
    evals = squad.subset(eval_pool, profile.data.sft_eval_size, profile.seed)

    def scrubbed(exs):
        out = []
        for ex in tqdm(exs, desc="scrubbing QA", disable=not progress, leave=False):
            if profile.data.scrub_pii:
                new, n, rewritten = scrub_example(ex)
                report.pii_replacements += n
                report.answers_rewritten += int(rewritten)
                if new is None:
                    report.answers_dropped_pii += 1
                    continue
                ex = new
            out.append(ex)
        return out

    train, evals = scrubbed(train), scrubbed(evals)
    version = _squad_version(rows["validation"])
    tok_train, tok_eval = [], []
    for exs, sink in ((train, tok_train), (evals, tok_eval)):
        for ex in exs:
            row, cut = tokenize_example(ex, tokenizer, profile.data.max_sft_tokens, fmt)
            report.contexts_cut += int(cut)
            sink.append(row)
    report.train_examples, report.eval_examples = len(tok_train), len(tok_eval)
    if not tok_train or not tok_eval:
        raise DataError("data.sft: no usable training or evaluation examples left")
    data = SftData(
        train=Dataset.from_list(tok_train),
        eval_tokenized=Dataset.from_list(tok_eval),
        # SQuAD 2.0 rows carry is_impossible; the official script of that version scores them.
        eval_examples=[_eval_record(e, tokenizer, fmt, version) for e in evals],
        report=report,
    )
    return _save_sft(data, [asdict(ex) for ex in train], run_dir)


def _save_sft(data: SftData, train_rows: list[dict[str, Any]], run_dir: str | Path) -> SftData:
    """Write the SFT sets into the run folder, where :func:`load_sft` and the rollback drill read them."""
    out = Path(run_dir) / "data"
    with open(out / "sft_train.jsonl", "w", encoding="utf-8") as fh:
        for row in train_rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    data.train.save_to_disk(str(out / "sft_train"))
    data.eval_tokenized.save_to_disk(str(out / "sft_eval_tokenized"))
    with open(out / "sft_eval.jsonl", "w", encoding="utf-8") as fh:
        for rec in data.eval_examples:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    (out / "sft_report.json").write_text(json.dumps(asdict(data.report), indent=2) + "\n")
    return data


def load_conversations(profile: Profile, split: str) -> tuple[list[tasks.Conversation], tasks.TaskReport]:
    """An instruction or chat split as conversations, read as ``modft validate`` reads it; errors name key and row."""
    spec = profile.data.sft
    fields = tasks.FieldMap(**spec.fields.model_dump())
    try:
        if spec.hub_name:
            rows = load_rows(spec, profile)[split]
            return tasks.hub_conversations(
                rows,
                spec.format,
                fields=fields,
                messages_field=spec.messages_field,
                source=f"data.sft: hub dataset {spec.hub_name} [{split}]",
            )
        key = f"data.sft.{split}_file"
        return tasks.read_conversations(
            profile.resolve(getattr(spec, f"{split}_file")),
            key,
            spec.format,
            fields=fields,
            messages_field=spec.messages_field,
        )
    except tasks.TaskFormatError as exc:
        raise DataError(str(exc)) from None


def _prepare_conversations(
    profile: Profile, tokenizer, fmt: PromptFormat, run_dir: str | Path, *, progress: bool
) -> SftData:
    """prepare_sft for instruction and chat sets: check, de-duplicate, scrub, subset, render with assistant-only loss."""
    from datasets import Dataset

    spec = profile.data.sft
    report = SftReport(format=spec.format)
    convs = {}
    for split in ("train", "validation"):
        convs[split], rep = load_conversations(profile, split)
        _check_collapse(
            rep.examples, rep.why(), profile, f"data.sft {split}", spec.hub_name or getattr(spec, f"{split}_file")
        )
        report.loaded[split] = rep.as_dict()
    # A held-out prompt that training also has would flatter every score.
    seen = {c.messages[:-1] for c in convs["train"]}
    pool = [c for c in convs["validation"] if c.messages[:-1] not in seen]
    report.overlapping_titles_removed = len(convs["validation"]) - len(pool)
    picked = {
        "train": squad.subset(convs["train"], profile.data.sft_subset_size, profile.seed),
        "validation": squad.subset(pool, profile.data.sft_eval_size, profile.seed),
    }
    rows: dict[str, list] = {"train": [], "validation": []}
    kept: dict[str, list[tasks.Conversation]] = {"train": [], "validation": []}
    for split, labels in (("train", "all"), ("validation", "last")):
        for conv in picked[split]:
            if profile.data.scrub_pii:
                conv, n = tasks.scrub_conversation(conv)
                report.pii_replacements += n
            try:
                row = tasks.tokenize_conversation(conv, tokenizer, fmt, profile.data.max_sft_tokens, labels=labels)
            except tasks.TaskFormatError as exc:
                raise DataError(f"data.sft {split}: {exc}") from None
            if row is None:
                report.dropped_too_long += 1
                continue
            rows[split].append(row)
            kept[split].append(conv)
    report.train_examples, report.eval_examples = len(rows["train"]), len(rows["validation"])
    if not rows["train"] or not rows["validation"]:
        raise DataError(
            f"data.sft: no usable training or evaluation examples left ({report.dropped_too_long} longer "
            f"than data.max_sft_tokens={profile.data.max_sft_tokens})"
        )
    evals = [
        {"id": c.id, "prompt": tasks.prompt_text(c, tokenizer, fmt), "answers": [c.reference], "format": spec.format}
        for c in kept["validation"]
    ]
    data = SftData(Dataset.from_list(rows["train"]), Dataset.from_list(rows["validation"]), evals, report)
    return _save_sft(
        data, [{"id": c.id, "messages": c.as_dicts(), "format": spec.format} for c in kept["train"]], run_dir
    )


def load_sft(run_dir: str | Path) -> SftData:
    """The SFT sets notebook 01 saved."""
    out = Path(run_dir) / "data"
    train = _load_saved(out / "sft_train", "01_data_prep")
    tokenized = _load_saved(out / "sft_eval_tokenized", "01_data_prep")
    for name in ("sft_eval.jsonl", "sft_report.json"):
        _require(out / name, "01_data_prep")
    with open(out / "sft_eval.jsonl", encoding="utf-8") as fh:
        evals = [json.loads(line) for line in fh]
    rep = SftReport(**json.loads((out / "sft_report.json").read_text()))
    return SftData(train, tokenized, evals, rep)


def shuffled_answer_set(profile: Profile, run_dir: str | Path, tokenizer):
    """The SFT training set with answers permuted across questions: a deliberately bad task set.

    The rollback drill trains a regressing candidate on it, so the promotion gate has something real
    to refuse. Prompts are built exactly as for the real task set.
    """
    import random

    from datasets import Dataset

    path = Path(run_dir) / "data" / "sft_train.jsonl"
    _require(path, "01_data_prep")
    with open(path, encoding="utf-8") as fh:
        examples = [json.loads(line) for line in fh]
    fmt, max_tokens = prompt_format(profile, tokenizer), profile.data.max_sft_tokens
    if examples and "messages" in examples[0]:  # instruction and chat sets: permute the final replies
        convs = [tasks.Conversation(e["id"], tuple((t["role"], t["content"]) for t in e["messages"])) for e in examples]
        replies = [c.reference for c in convs]
        random.Random(profile.seed).shuffle(replies)
        shuffled = (
            tasks.tokenize_conversation(c.with_reference(r), tokenizer, fmt, max_tokens) for c, r in zip(convs, replies)
        )
        return Dataset.from_list([row for row in shuffled if row is not None])
    answers = [e["answers"][0] for e in examples]
    random.Random(profile.seed).shuffle(answers)
    rows = []
    for ex, wrong in zip(examples, answers):
        prompt_ids = tokenizer(fmt.prompt(tokenizer, ex["context"], ex["question"]), add_special_tokens=False)[
            "input_ids"
        ]
        answer_ids = tokenizer(fmt.answer_prefix + wrong, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        if len(prompt_ids) + len(answer_ids) <= max_tokens:
            ids = prompt_ids + answer_ids
            rows.append(
                {"input_ids": ids, "labels": [-100] * len(prompt_ids) + answer_ids, "attention_mask": [1] * len(ids)}
            )
    return Dataset.from_list(rows)


CLOSED_BOOK_FILE = "closed_book.jsonl"


def prepare_closed_book(
    profile: Profile, tokenizer, run_dir: str | Path, train_docs: list[str]
) -> list[dict[str, Any]]:
    """Held-out questions whose answer the DAPT training corpus states, to be asked without their context.

    On extractive QA the context holds the answer, so the domain adapter adds little to the task;
    asked closed-book, a question can only be answered from what the model knows, which is what
    DAPT is for. A held-out question qualifies when a training document names its subject (the
    SQuAD title) and contains one of its reference answers. At most
    ``compose.closed_book_examples`` are kept, in the held-out set's order; saved as
    ``data/closed_book.jsonl``.
    """
    fmt = prompt_format(profile, tokenizer)
    path = Path(run_dir) / "data" / "sft_eval.jsonl"
    _require(path, "01_data_prep")
    with open(path, encoding="utf-8") as fh:
        evals = [json.loads(line) for line in fh]
    kept = []
    # Only SQuAD examples carry a subject (title) and short answers to look for in the corpus.
    for ex in evals if profile.data.sft.format == "squad" else ():
        subject = ex["title"].replace("_", " ")
        if any(subject in doc and any(a and a in doc for a in ex["answers"]) for doc in train_docs):
            kept.append(
                {
                    "id": ex["id"],
                    "title": ex["title"],
                    "question": ex["question"],
                    "answers": ex["answers"],
                    "prompt": fmt.prompt(tokenizer, None, ex["question"]),
                    "squad_version": ex.get("squad_version", "v1.1"),
                }
            )
        if len(kept) >= profile.compose.closed_book_examples:
            break
    with open(Path(run_dir) / "data" / CLOSED_BOOK_FILE, "w", encoding="utf-8") as fh:
        for rec in kept:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return kept


def load_closed_book(run_dir: str | Path) -> list[dict[str, Any]]:
    """The closed-book questions notebook 01 chose (empty when it found none)."""
    path = Path(run_dir) / "data" / CLOSED_BOOK_FILE
    _require(path, "01_data_prep")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def sft_collator(tokenizer):
    """Pads each batch to its longest example; padded label positions are -100 (no loss)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding="longest", return_tensors="pt")


def fingerprint_dataset(ds) -> str:
    """sha256 of a tokenized dataset's token ids: which exact data an adapter was trained on."""
    h = hashlib.sha256()
    for ids in ds["input_ids"]:
        h.update(json.dumps(ids).encode())
    return h.hexdigest()


def probe_batch(run_dir: str | Path, n: int):
    """``n`` held-out domain blocks as one tensor: fixed inputs for exact logit comparisons."""
    import torch

    _, eval_blocks = load_dapt_blocks(run_dir)
    return torch.tensor(eval_blocks[: min(n, len(eval_blocks))]["input_ids"])


def read_sft_file(path: Path, key: str) -> list[dict[str, Any]]:
    """A local SQuAD file as hub-layout rows, whatever its layout; errors name the key and file."""
    if path.is_dir():
        raise DataError(f"{key}: {path} is a folder; give the SQuAD file (.json or .jsonl)")
    try:
        return squad.read_squad_file(path)
    except squad.SquadFormatError as exc:
        raise DataError(f"{key}: {exc}") from None


def _squad_version(rows) -> str:
    """v2.0 when rows carry ``is_impossible`` (original v2.0 files) or any has no answer (the hub's squad_v2), else v1.1."""
    columns = getattr(rows, "column_names", None)
    if columns is not None:
        if "is_impossible" in columns:
            return "v2.0"
        answers = rows["answers"] if "answers" in columns else []
    else:
        if any("is_impossible" in r for r in rows):
            return "v2.0"
        answers = [r.get("answers") for r in rows]
    return "v2.0" if any(isinstance(a, dict) and not a.get("text") for a in answers) else "v1.1"


def check_sft_examples(report: squad.SquadReport, examples: int, profile: Profile, key: str, path: Path) -> None:
    """Refuse a SQuAD split that collapses (empty, all duplicates, answers not found) below the minimum."""
    why = (
        f"{report.rows_in} row(s) read, {report.duplicate_ids} duplicate id(s), {report.dropped_bad_answer} "
        f"without an answer found in the context, {report.unanswerable_dropped} unanswerable dropped"
    )
    _check_collapse(examples, why, profile, key, path)


def _check_collapse(examples: int, why: str, profile: Profile, key: str, path) -> None:
    need = profile.data.min_sft_examples
    if examples < need:
        raise DataError(
            f"{key}: {path} leaves {examples} usable example(s) ({why}); at least {need} are needed "
            "(data.min_sft_examples). Check the file, or lower data.min_sft_examples for a smoke test."
        )


def validate_inputs(profile: Profile) -> dict[str, int]:
    """Read every local data file of the profile once and fail on the first bad row, naming it.

    Runs before any model is built or loaded, so a malformed file costs a second, not a
    training run. Hub datasets are checked when they are loaded. Returns rows per file.
    """
    counts: dict[str, int] = {}
    dapt, sft = profile.data.dapt, profile.data.sft
    chat_template(profile)  # a template file that is not there fails here, not in notebook 01
    if not dapt.hub_name:
        for split, source in corpus_sources(profile).items():
            try:
                if source.format == "jsonl":  # line-level messages (the json builder's are vaguer)
                    for f in source.files:
                        if f.suffix != ".gz":
                            _check_text_rows(f, f"data.dapt.{split}_file")
                counts[str(profile.resolve(getattr(dapt, f"{split}_file")))] = len(
                    readers.read(source, dapt.text_column)
                )
            except readers.SourceError as exc:
                raise DataError(str(exc)) from None
    for key in ("train_file", "validation_file"):
        if getattr(sft, key) and sft.format != "squad":
            convs, report = load_conversations(profile, key.removesuffix("_file"))
            _check_collapse(
                report.examples, report.why(), profile, f"data.sft.{key}", profile.resolve(getattr(sft, key))
            )
            counts[str(profile.resolve(getattr(sft, key)))] = report.rows_in
        elif getattr(sft, key):
            path = profile.resolve(getattr(sft, key))
            rows = read_sft_file(path, f"data.sft.{key}")
            try:
                examples, report = squad.rows_to_examples(
                    rows, unanswerable=profile.data.unanswerable, source=str(path)
                )
            except (squad.SquadFormatError, ValueError) as exc:
                raise DataError(f"data.sft.{key}: {exc}") from exc
            check_sft_examples(report, len(examples), profile, f"data.sft.{key}", path)
            counts[str(path)] = len(rows)
    if profile.model.tiny is not None:
        path = profile.resolve(profile.model.tiny.generic_corpus)
        counts[str(path)] = _check_text_rows(path, "model.tiny.generic_corpus")
    return counts


def _check_text_rows(path: Path, key: str) -> int:
    if path.is_dir():
        raise DataError(f"{key}: {path} is a folder; give the JSON-lines file")
    n = 0
    try:
        for lineno, line in readers.decoded_lines(path, key):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{key}: {path}, line {lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise DataError(f"{key}: {path}, line {lineno}: expected an object with a string 'text' field")
            n += 1
    except readers.SourceError as exc:
        raise DataError(str(exc)) from None
    if n == 0:
        raise DataError(f"{key}: {path} has no rows")
    return n
