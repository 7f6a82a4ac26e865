"""``modft validate``: every local data file of a profile read once, before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

from modft_utils.config import Profile
from modft_utils.data import readers, squad
from modft_utils.data.prompts import chat_template
from modft_utils.data.sft import check_collapse, check_sft_examples
from modft_utils.data.sources import (
    corpus_sources,
    load_conversations,
    read_sft_file,
)
from modft_utils.errors import DataError


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
