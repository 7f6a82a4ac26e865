"""Where the domain corpus comes from: one reader per source format, used by validation and the run alike.

A domain team arrives with a folder of documents in whatever shape their tools wrote. A profile's
``data.dapt.train_file`` / ``validation_file`` take a file, a folder or a glob; the format comes from
the extension (``data.dapt.format: auto``) or is said explicitly:

=============  ==========================================  =====================================
format         files                                       rows
=============  ==========================================  =====================================
``jsonl``      ``.jsonl``, ``.json`` (``{"text": ...}``)   wikitext lines, as the hub's rows
``wikitext``   ``.raw`` (wikitext-2-raw's own files)       one row per line (LF or CRLF)
``text``       ``.txt``, ``.md``                           one document per file
``parquet``    ``.parquet``                                one document per row (``text_column``)
``csv``        ``.csv``                                    one document per row (``text_column``)
``saved``      a folder from ``datasets.save_to_disk``     wikitext lines (``text_column``)
=============  ==========================================  =====================================

Any of the file formats may be gzipped (``.gz``). ``datasets``' own builders (``json``, ``text``,
``parquet``, ``csv``) do the reading, so large corpora are memory-mapped tables, not Python lists.
``modft validate`` calls :func:`read` too, so a file it passes is a file the run reads.
"""

from __future__ import annotations

import glob
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modft_utils.errors import ModftError

SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".raw": "wikitext",
    ".txt": "text",
    ".md": "text",
    ".parquet": "parquet",
    ".csv": "csv",
}
DOCUMENT_FORMATS = frozenset({"text", "parquet", "csv"})  # a row is a whole document
BUILDERS = {"jsonl": "json", "wikitext": "text", "text": "text", "parquet": "parquet", "csv": "csv"}


class SourceError(ModftError, ValueError):
    """A corpus source that cannot be read; the message names the key and the file, line or column."""


@dataclass(frozen=True)
class CorpusSource:
    """A resolved source: the files (or saved folder), their format, and what a row is."""

    key: str  # the profile key it came from, for messages
    files: tuple[Path, ...]
    format: str

    @property
    def documents(self) -> bool:
        """Rows are whole documents (not wikitext lines grouped by `` = Title = `` headings)."""
        return self.format in DOCUMENT_FORMATS

    def describe(self) -> str:
        shown = str(self.files[0]) + (f" and {len(self.files) - 1} more" if len(self.files) > 1 else "")
        return f"{self.format} reader ({'one document per row' if self.documents else 'wikitext lines'}): {shown}"


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_info.json").is_file()
        or (path / "state.json").is_file()
        or (path / "dataset_dict.json").is_file()
    )


def resolve(value: str, base: Path, key: str, fmt: str = "auto") -> CorpusSource:
    """The files ``value`` (a file, folder or glob, relative to ``base``) names, and their format."""
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if any(ch in value for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise SourceError(f"{key}: the pattern {path} matches no file")
    elif _is_saved_dataset(path):
        if fmt not in ("auto", "saved"):
            raise SourceError(f"{key}: {path} is a folder written by datasets.save_to_disk, not {fmt!r} files")
        return CorpusSource(key, (path,), "saved")
    elif path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not p.name.startswith(".") and (_suffix(p) in SUFFIX_FORMATS if fmt == "auto" else True)
        )
        if not files:
            raise SourceError(
                f"{key}: the folder {path} holds no corpus file (known: "
                f"{', '.join(sorted(SUFFIX_FORMATS))}, optionally .gz)"
            )
    elif path.is_file():
        files = [path]
    else:
        raise SourceError(f"{key}: {path} does not exist")
    if fmt == "saved":
        raise SourceError(f"{key}: {path} is not a folder written by datasets.save_to_disk")
    if fmt != "auto":
        return CorpusSource(key, tuple(files), fmt)
    formats = {}
    for f in files:
        found = SUFFIX_FORMATS.get(_suffix(f))
        if found is None:
            raise SourceError(
                f"{key}: {f}: no reader for {_suffix(f) or 'files without an extension'!r} "
                f"(known: {', '.join(sorted(SUFFIX_FORMATS))}, optionally .gz); set data.<corpus>.format "
                "to read it as one of jsonl, wikitext, text, parquet, csv"
            )
        formats.setdefault(found, f)
    if len(formats) > 1:
        shown = ", ".join(f"{name} ({f.name})" for name, f in formats.items())
        raise SourceError(
            f"{key}: the files mix formats: {shown}; point the key at one kind, or set data.<corpus>.format"
        )
    return CorpusSource(key, tuple(files), next(iter(formats)))


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def decoded_lines(path: Path, key: str):
    """``(line number, text)`` of a UTF-8 file (gzipped or not), LF and CRLF alike.

    An invalid byte is named by line and by offset in the file: a decoder working on read chunks
    reports an offset inside the chunk, which points nowhere in the file.
    """
    offset = 0
    with _open_bytes(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SourceError(
                    f"{key}: {path}, line {lineno}: not valid UTF-8 at byte {offset + exc.start} of the file"
                    f"{' (uncompressed)' if path.suffix == '.gz' else ''}"
                ) from None
            offset += len(raw)


def check_utf8(source: CorpusSource) -> None:
    """Name the first byte that is not UTF-8 by file, line and offset, before a builder trips on it."""
    if source.format in ("parquet", "saved"):
        return  # binary formats: their strings are checked by their own readers
    for path in source.files:
        for _ in decoded_lines(path, source.key):
            pass


def read(source: CorpusSource, text_column: str = "text"):
    """The source as a ``datasets.Dataset`` with one ``text`` column (rows as :attr:`CorpusSource.documents` says)."""
    import datasets
    from datasets import load_dataset, load_from_disk

    check_utf8(source)
    try:
        if source.format == "saved":
            table = load_from_disk(str(source.files[0]))
            if isinstance(table, datasets.DatasetDict):
                raise SourceError(
                    f"{source.key}: {source.files[0]} holds several splits ({', '.join(table)}); "
                    "point the key at one split's folder"
                )
        else:
            kwargs: dict[str, Any] = {"sample_by": "document"} if source.format == "text" else {}
            table = load_dataset(
                BUILDERS[source.format], data_files=[str(f) for f in source.files], split="train", **kwargs
            )
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow, csv and json errors alike: name the source
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SourceError(
            f"{source.key}: {source.describe()}: not readable as {source.format} ({type(exc).__name__}: {first})"
        ) from None
    column = "text" if source.format in ("wikitext", "text") else text_column
    if column not in table.column_names:
        raise SourceError(
            f"{source.key}: {source.describe()}: no column {column!r} (columns: {table.column_names}); "
            "set data.<corpus>.text_column"
        )
    if column != "text":
        table = (
            table.rename_column(column, "text")
            if "text" not in table.column_names
            else table.remove_columns("text").rename_column(column, "text")
        )
    table = table.select_columns(["text"])
    if len(table) == 0:
        raise SourceError(f"{source.key}: {source.describe()}: no rows")
    return table
