"""The domain corpus for DAPT: cleaned, scrubbed, de-duplicated, tokenized and packed into blocks.

Notebook 01 saves the blocks in the run folder so later notebooks read exactly what it produced.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modft_utils import runs
from modft_utils.config import Profile
from modft_utils.data import readers
from modft_utils.data.clean import CleanConfig, StepReport, clean_corpus, dedup_key
from modft_utils.data.pii import scrub_pii_with_spans
from modft_utils.data.sources import (
    corpus_sources,
    load_rows,
)
from modft_utils.errors import DataError


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
    replay_blocks: int = 0  # of train_blocks, the last ones: data.replay_file's

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


def _blocks_dataset(blocks: list[list[int]], replayed: int | None = None, weight: float = 1.0):
    """Blocks as a dataset; with ``replayed``, a ``replay`` column gives the last ``replayed`` rows (the
    replay blocks that data.replay_loss distill distils rather than reads as text) their ``weight``, the
    others 0."""
    from datasets import Dataset

    columns = {"input_ids": blocks, "labels": blocks}
    if replayed is not None:
        columns["replay"] = [0.0] * (len(blocks) - replayed) + [float(weight)] * replayed
    return Dataset.from_dict(columns)


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
    # Replay blocks follow the domain's; the Trainer's sampler shuffles them together.
    replay = replay_blocks(profile, tokenizer, len(train_blocks))
    train_blocks += replay
    data = DaptData(
        train_docs=cleaned.train_docs,
        eval_docs=cleaned.eval_docs,
        train_blocks=_blocks_dataset(
            train_blocks,
            len(replay) if profile.data.replay_loss == "distill" else None,
            profile.data.replay_weight,
        ),
        eval_blocks=_blocks_dataset(eval_blocks),
        reports=cleaned.reports,
        pii_replacements=cleaned.pii_replacements,
        leaked_eval_docs=cleaned.leaked_eval_docs,
        replay_blocks=len(replay),
    )
    run = runs.folder(run_dir)
    data.train_blocks.save_to_disk(str(run.dapt_blocks("train")))
    data.eval_blocks.save_to_disk(str(run.dapt_blocks("eval")))
    run.dapt_pii_counts.write_text(json.dumps(cleaned.pii_counts, indent=2) + "\n")
    return data


def load_dapt_blocks(run_dir: str | Path) -> tuple[Any, Any]:
    """The packed (train, eval) blocks notebook 01 saved."""
    run = runs.folder(run_dir)
    return run.load_dataset(run.dapt_blocks("train")), run.load_dataset(run.dapt_blocks("eval"))


def _tail_blocks(texts: list[str], tokenizer, block: int, n: int) -> tuple[list[list[int]], int]:
    """The last ``n`` packed blocks of ``texts`` and the index of the first text they draw on.

    Only the tail is tokenized, 64 texts at a time from the end, until ``n + 1`` blocks' worth is read.
    """
    ids: list[list[int]] = []
    end = len(texts)
    while end > 0 and sum(len(t) + 1 for t in ids) < (n + 1) * block:
        start = max(0, end - 64)
        ids = tokenizer(texts[start:end], add_special_tokens=False)["input_ids"] + ids
        end = start
    return pack(ids, block, tokenizer.eos_token_id)[-n:], end


def load_generic_blocks(profile: Profile, tokenizer, n: int) -> Any | None:
    """``n`` packed blocks of ``data.generic_eval_file`` (prose outside the domain), None when it is not set.

    The blocks are the file's last ``n`` (packed as DAPT packs, no cleaning: the text is not the user's
    domain), so a perplexity on them is comparable across stacks and runs of one profile. For the tiny
    profile the file is the prose its base was pretrained on: the measure is what a domain adapter made
    the base forget of it.
    """
    if profile.data.generic_eval_file is None:
        return None
    from modft_utils.data.validate import read_text_rows

    texts = read_text_rows(profile.resolve(profile.data.generic_eval_file), "data.generic_eval_file")
    blocks, _ = _tail_blocks(texts, tokenizer, profile.data.block_size, n)
    if not blocks:
        raise DataError(f"data.generic_eval_file: fewer tokens than one block of {profile.data.block_size}")
    return _blocks_dataset(blocks)


def replay_blocks(profile: Profile, tokenizer, domain_blocks: int) -> list[list[int]]:
    """The blocks of ``data.replay_file`` mixed into DAPT: ``data.replay_share`` of the training blocks.

    Replay (general text beside the domain's) is how continued pretraining keeps what the base knew.
    The blocks are drawn evenly over the file. When the file is also ``data.generic_eval_file``, the
    texts that forgetting is measured on are left out, so the measure never sees trained-on text.
    """
    share = profile.data.replay_share
    if share == 0 or profile.data.replay_file is None:
        return []
    from modft_utils.data.validate import read_text_rows

    block = profile.data.block_size
    want = round(domain_blocks * share / (1 - share))
    path = profile.resolve(profile.data.replay_file)
    texts = read_text_rows(path, "data.replay_file")
    shared = profile.data.generic_eval_file is not None and profile.resolve(profile.data.generic_eval_file) == path
    if shared:
        _, measured_from = _tail_blocks(texts, tokenizer, block, profile.dapt.eval_blocks)
        texts = texts[:measured_from]
    # Every stride-th text, so a long file is replayed from end to end rather than from its first pages;
    # 6 characters a token is generous for prose, so the picked texts hold enough blocks.
    stride = max(1, sum(len(t) for t in texts) // ((want + 1) * block * 6))
    for picked in (texts[::stride], texts) if stride > 1 else (texts,):
        ids = tokenizer(picked, add_special_tokens=False)["input_ids"] if picked else []
        packed = pack(ids, block, tokenizer.eos_token_id)
        blocks = packed[:: max(1, len(packed) // max(1, want))][:want]  # spread over what was packed, too
        if len(blocks) == want:
            break
    if len(blocks) < want:
        raise DataError(
            f"data.replay_file: {path} packs into {len(blocks)} blocks of {block} tokens"
            + (" (after leaving out the text data.generic_eval_file measures)" if shared else "")
            + f", and data.replay_share {share} of DAPT's training blocks is {want}; lower data.replay_share or "
            "give a longer file"
        )
    return blocks


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
