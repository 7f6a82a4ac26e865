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

Only regular files are opened (a FIFO blocks its reader forever), globs do not follow links to
folders and list each file once, and every failure of a file (not UTF-8, a cut or mislabelled
``.gz``, a CSV row the csv module refuses) is a :class:`SourceError` naming the key, the file and
the line, row or byte, never a library's traceback. A UTF-8 byte order mark is not text: dropped.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modft_utils.config import cut, glob_files, is_glob, special_file
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
BOM = "\ufeff"
# The csv module refuses a field over 131,072 characters by default; pandas (the DAPT csv builder)
# has no such limit, so a long document in a CSV cell was read there and refused by the SFT reader.
CSV_FIELD_LIMIT = 2**31 - 1  # the most the csv module takes on every platform (a C long)


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
    if is_glob(value):
        files = glob_files(path)
        if not files:
            raise SourceError(f"{key}: the pattern {path} matches no file")
    elif (kind := special_file(path)) is not None:
        raise SourceError(f"{key}: {path} is {kind}, not a regular file: only regular files and folders are read")
    elif _is_saved_dataset(path):
        if fmt not in ("auto", "saved"):
            raise SourceError(f"{key}: {path} is a folder written by datasets.save_to_disk, not {fmt!r} files")
        return CorpusSource(key, (path,), "saved")
    elif path.is_dir():
        # rglob does not enter links to folders; a file reached under two names is read once
        unique: dict[str, Path] = {}
        for p in sorted(path.rglob("*")):
            if p.is_file() and not p.name.startswith(".") and (_suffix(p) in SUFFIX_FORMATS if fmt == "auto" else True):
                unique.setdefault(os.path.realpath(p), p)
        files = sorted(unique.values())
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


def _open_bytes(path: Path, key: str):
    if (kind := special_file(path)) is not None:  # opening a FIFO would block until someone writes to it
        raise SourceError(f"{key}: {path} is {kind}, not a regular file")
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def _raw_lines(path: Path, key: str) -> Iterator[tuple[int, int, bytes]]:
    """``(line number, byte offset, bytes)`` of a file, gunzipped if named ``.gz``.

    A ``.gz`` that is not gzip, or is cut short, fails in the middle of iteration with gzip's
    ``BadGzipFile`` or ``EOFError`` (a traceback): named here with the key, the file and the line.
    """
    lineno, offset = 0, 0
    try:
        with _open_bytes(path, key) as fh:
            for lineno, raw in enumerate(fh, 1):
                yield lineno, offset, raw
                offset += len(raw)
    except EOFError:
        raise SourceError(
            f"{key}: {path}: the gzip data end early, {_gz_where(lineno)} (a truncated file): copy it again"
        ) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise SourceError(
            f"{key}: {path}: not a readable gzip file, {_gz_where(lineno)} ({cut(str(exc))}): a file named .gz "
            "must be whole and gzip-compressed"
        ) from None
    except OSError as exc:  # a folder, no permission, an I/O error
        raise SourceError(f"{key}: {path}: cannot be read ({exc.strerror or cut(str(exc))})") from None


def _gz_where(lines_read: int) -> str:
    return f"after line {lines_read}" if lines_read else "before the end of line 1"


def _decode(raw: bytes, lineno: int) -> str:
    text = raw.decode("utf-8")
    return text.removeprefix(BOM) if lineno == 1 else text


def decoded_lines(path: Path, key: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file (gzipped or not), LF and CRLF alike, without a leading BOM.

    An invalid byte is named by line and by offset in the file: a decoder working on read chunks
    reports an offset inside the chunk, which points nowhere in the file.
    """
    for lineno, offset, raw in _raw_lines(path, key):
        try:
            yield lineno, _decode(raw, lineno)
        except UnicodeDecodeError as exc:
            raise SourceError(
                f"{key}: {path}, line {lineno}: not valid UTF-8 at byte {offset + exc.start} of the file"
                f"{' (uncompressed)' if path.suffix == '.gz' else ''}"
            ) from None


def csv_rows(path: Path, key: str, *, strict: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number, row)`` of a CSV file with a header (gzipped or not); row 1 is the first after it.

    Every failure names the row, the line and (for a byte that is not UTF-8) its offset in the file:
    a text-mode reader reports an offset inside its read chunk, and neither row nor line. Fields may
    be as long as :data:`CSV_FIELD_LIMIT` characters. With ``strict`` (the SFT reader's), a file cut
    inside a quoted field, or stray quotes, is refused rather than read as an odd last row; the DAPT
    check leaves parsing to pandas, which is lenient, and only names bytes that are not UTF-8.
    """
    csv.field_size_limit(CSV_FIELD_LIMIT)
    rows = 0
    header_read = False

    def where(lineno: int) -> str:
        return f"row {rows + 1} (line {lineno})" if header_read else f"the header (line {lineno})"

    def text() -> Iterator[str]:
        for lineno, offset, raw in _raw_lines(path, key):
            try:
                yield _decode(raw, lineno)
            except UnicodeDecodeError as exc:
                raise SourceError(
                    f"{key}: {path}, {where(lineno)}: not valid UTF-8 at byte {offset + exc.start} of the file"
                ) from None

    reader = csv.DictReader(text(), strict=strict)
    try:
        reader.fieldnames  # noqa: B018 - reads the header, so later failures are named by row
        header_read = True
        for row in reader:
            rows += 1
            yield rows, row
    except csv.Error as exc:
        raise SourceError(f"{key}: {path}, {where(reader.reader.line_num)}: not valid CSV ({cut(str(exc))})") from None


def check_utf8(source: CorpusSource) -> None:
    """Name the first byte that is not UTF-8 by file, line and offset (a CSV also by row), before a builder trips on it."""
    if source.format in ("parquet", "saved"):
        return  # binary formats: their strings are checked by their own readers
    for path in source.files:
        lines = csv_rows(path, source.key, strict=False) if source.format == "csv" else decoded_lines(path, source.key)
        for _ in lines:
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
            if source.format in ("text", "wikitext"):
                kwargs["encoding"] = "utf-8-sig"  # a BOM is no text; the json and csv builders drop it already
            table = load_dataset(
                BUILDERS[source.format], data_files=[str(f) for f in source.files], split="train", **kwargs
            )
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow, csv and json errors alike: name the source
        first = cut((str(exc).strip().splitlines() or [type(exc).__name__])[0])
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


def json_lines(path: Path, key: str) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` of every non-blank line of a JSON-lines file; SourceError naming
    ``key``, the file and the line when one is not JSON."""
    for lineno, line in decoded_lines(path, key):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{key}: {path}, line {lineno}: not valid JSON ({exc.msg})") from None
        except RecursionError:  # json recurses once per [ or {
            raise SourceError(f"{key}: {path}, line {lineno}: not valid JSON (nested too deeply)") from None
        except ValueError as exc:  # an integer of more than 4,300 digits
            raise SourceError(f"{key}: {path}, line {lineno}: not valid JSON ({cut(str(exc))})") from None
