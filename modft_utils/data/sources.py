"""Where both data sets come from: hub tables or local files, read the way ``modft validate`` reads them.

The same loaders read the hub datasets (``wikitext``/``wikitext-2-raw-v1``, ``squad``) and local
files in their published layouts; everything after loading is one code path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modft_utils.config import CorpusSpec, Profile
from modft_utils.data import readers, squad, tasks
from modft_utils.errors import DataError


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
        split: read_sft_file(profile.data_file("sft", split), f"data.sft.{split}_file")
        for split in ("train", "validation")
    }


def load_rows(spec: CorpusSpec, profile: Profile) -> dict[str, Any]:
    """The domain corpus's ``train`` and ``validation`` splits as ``datasets`` tables with a ``text`` column.

    Hub datasets as published; local sources through :mod:`modft_utils.data.readers`, the same readers
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
            split: readers.resolve(str(profile.data_file("dapt", split)), base, f"data.dapt.{split}_file", spec.format)
            for split in ("train", "validation")
        }
    except readers.SourceError as exc:
        raise DataError(str(exc)) from None


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
            profile.data_file("sft", split),
            key,
            spec.format,
            fields=fields,
            messages_field=spec.messages_field,
        )
    except tasks.TaskFormatError as exc:
        raise DataError(str(exc)) from None


def read_sft_file(path: Path, key: str) -> list[dict[str, Any]]:
    """A local SQuAD file as hub-layout rows, whatever its layout; errors name the key and file."""
    if path.is_dir():
        raise DataError(f"{key}: {path} is a folder; give the SQuAD file (.json or .jsonl)")
    try:
        return squad.read_squad_file(path)
    except squad.SquadFormatError as exc:
        raise DataError(f"{key}: {exc}") from None


def squad_version(rows) -> str:
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
