"""``modft validate``: every local data file of a profile read once, before any model loads.

What validation passes, the run must be able to use: besides every row of every file, it checks what
only shows once files and the base are known (the profile loader has checked the keys): the chat
template renders, the DAPT splits share no file, and ``data.block_size`` fits the base's context.
"""

from __future__ import annotations

import os
from pathlib import Path

from modft_utils.config import Profile, cut, special_file
from modft_utils.data import knowledge, readers, squad
from modft_utils.data.prompts import check_chat_template
from modft_utils.data.sft import check_collapse, check_sft_examples
from modft_utils.data.sources import (
    corpus_sources,
    load_conversations,
    read_sft_file,
)
from modft_utils.errors import DataError, ModftError
from modft_utils.modeling.basecfg import read_model_config

# Where configs keep the longest sequence a base accepts (GPT-2 style configs say n_positions).
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def validate_inputs(profile: Profile) -> dict[str, int]:
    """Read every local data file of the profile once and fail on the first bad row, naming it.

    Runs before any model is built or loaded, so a malformed file costs a second, not a
    training run. Hub datasets are checked when they are loaded. Returns rows per file.
    """
    counts: dict[str, int] = {}
    dapt, sft = profile.data.dapt, profile.data.sft
    check_chat_template(profile)  # a template that is missing, refused or never ends fails here, not in 01
    check_context(profile)
    if not dapt.hub_name:
        sources = corpus_sources(profile)
        _check_splits_apart(sources)
        for split, source in sources.items():
            try:
                if source.format == "jsonl":  # line-level messages (the json builder's are vaguer)
                    for f in source.files:
                        if f.suffix != ".gz":
                            _check_text_rows(f, f"data.dapt.{split}_file")
                counts[str(profile.data_file("dapt", split))] = len(readers.read(source, dapt.text_column))
            except readers.SourceError as exc:
                raise DataError(str(exc)) from None
    for split in ("train", "validation"):
        path, key = profile.data_file("sft", split), f"data.sft.{split}_file"
        if path is None:
            continue
        if sft.format != "squad":
            convs, report = load_conversations(profile, split)
            check_collapse(report.examples, report.why(), profile, key, path)
            counts[str(path)] = report.rows_in
            continue
        rows = read_sft_file(path, key)
        try:
            examples, report = squad.rows_to_examples(rows, unanswerable=profile.data.unanswerable, source=str(path))
        except (squad.SquadFormatError, ValueError) as exc:
            raise DataError(f"{key}: {exc}") from exc
        check_sft_examples(report, len(examples), profile, key, path)
        counts[str(path)] = len(rows)
    if profile.model.tiny is not None:
        path = profile.resolve(profile.model.tiny.generic_corpus)
        counts[str(path)] = _check_text_rows(path, "model.tiny.generic_corpus")
    if profile.data.generic_eval_file is not None:
        path = profile.resolve(profile.data.generic_eval_file)
        counts[str(path)] = _check_text_rows(path, "data.generic_eval_file")
    if profile.data.replay_file is not None:
        path = profile.resolve(profile.data.replay_file)
        counts[str(path)] = _check_text_rows(path, "data.replay_file")
    if profile.data.knowledge_probe is not None:
        if profile.data.sft.format != "squad":
            raise DataError(
                f"data.knowledge_probe: closed-book questions join SQuAD-format SFT sets only, and data.sft.format "
                f"is {profile.data.sft.format!r}; unset data.knowledge_probe or use a SQuAD-format task set"
            )
        path = profile.resolve(profile.data.knowledge_probe)
        counts[str(path)] = len(knowledge.read_probe(path))  # whether the corpus states each answer: notebook 01
    return counts


def check_context(profile: Profile) -> None:
    """Refuse a ``data.block_size`` longer than the base accepts (``max_position_embeddings``).

    The base's config is read without weights (:func:`read_model_config`). A base whose config cannot
    be read here is not this check's to name: ``modft validate`` and ``modft run`` check ``model.id``
    first (``preflight``), with the advice that fits.
    """
    try:
        config = read_model_config(profile)
    except ModftError:
        return
    limit = next((v for k in CONTEXT_KEYS if isinstance(v := getattr(config, k, None), int)), None)
    if limit is not None and profile.data.block_size > limit:
        raise DataError(
            f"data.block_size: {profile.data.block_size} is more than the {limit} positions the base "
            f"{cut(profile.model.id)} accepts (its max_position_embeddings); lower data.block_size"
        )


def _check_splits_apart(sources: dict[str, readers.CorpusSource]) -> None:
    """Refuse a DAPT validation split that shares a file with training: its perplexity would flatter."""
    train = {os.path.realpath(f): f for f in sources["train"].files}
    shared = [f for f in sources["validation"].files if os.path.realpath(f) in train]
    if shared:
        more = f" and {len(shared) - 1} more" if len(shared) > 1 else ""
        raise DataError(
            f"data.dapt.validation_file: {shared[0]}{more} is also read by data.dapt.train_file; held-out "
            "text must come from other files (perplexity on training text says nothing)"
        )


def _check_text_rows(path: Path, key: str) -> int:
    return len(read_text_rows(path, key))


def read_text_rows(path: Path, key: str) -> list[str]:
    """The ``text`` of every row of a JSON-lines file; DataError naming ``key``, the file and the line otherwise."""
    if path.is_dir():
        raise DataError(f"{key}: {path} is a folder; give the JSON-lines file")
    if (kind := special_file(path)) is not None:  # opening a FIFO would block validate forever
        raise DataError(f"{key}: {path} is {kind}, not a regular file")
    texts: list[str] = []
    try:
        for lineno, row in readers.json_lines(path, key):
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise DataError(f"{key}: {path}, line {lineno}: expected an object with a string 'text' field")
            texts.append(row["text"])
    except readers.SourceError as exc:
        raise DataError(str(exc)) from None
    if not texts:
        raise DataError(f"{key}: {path} has no rows")
    return texts
