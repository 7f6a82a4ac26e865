"""Cleaning the DAPT corpus: wikitext-faithful detokenization and a reported, step-by-step pipeline.

wikitext-2-raw comes one paragraph per row, tokenized Moses-style: ``1 @,@ 000``, ``state @-@ of
@-@ the @-@ art``, spaces around every punctuation mark and ``( text )``, ``" quoted "``, ``the
game 's``. Headings are rows such as `` = Title = `` (a new article) and `` = = Section = = ``.
:func:`clean_wikitext` turns that back into text as written; :func:`clean_corpus` runs the whole
pipeline (split, detokenize + normalize, PII scrub, exact and near de-duplication, length filter)
and reports rows and characters in and out of every step, so a notebook can show what each removed.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# ---------------------------------------------------------------- detokenization

# C0/C1 controls except tab and newline; zero-width and invisible formatting marks. ZWJ and ZWNJ
# (U+200C/U+200D) are kept: they change how Indic and Persian words and emoji sequences render.
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")
_NEWLINES = re.compile(r"\r\n?|[\u2028\u2029\x85]")
_HEADING = re.compile(r"^(=(?: =)*) (.*?) (=(?: =)*)$")
_TITLE_ROW = re.compile(r"^ ?= (?!=)(.*?)(?<!=) = ?\n?$")
_SECTION_ROW = re.compile(r"^ ?=(?: =)+ .*? =(?: =)+ ?\n?$")

# Wikitext's escaped joiners inside numbers and compounds: 1 @,@ 000, 3 @.@ 5, well @-@ known.
_AT_JOINER = re.compile(r" ?@([-,.])@ ?")
_OPEN_BRACKET = re.compile(r"([(\[{]) ")
_CLOSE_BRACKET = re.compile(r" ([)\]}])")
_SPACE_BEFORE_PUNCT = re.compile(r" ([,.;:!?%](?![^\W\d_])|\.{3}|…)")
_CONTRACTION = re.compile(r"(?<=\w) (n't|'(?:s|t|re|ve|ll|d|m)\b)", re.IGNORECASE)
_CURRENCY = re.compile(r"([$£€¥₹#]) (?=\d)")
_DOUBLE_QUOTE = '"'


def _pair_quotes(line: str) -> str:
    """``He said " yes " .`` -> ``He said "yes" .``: odd quotes open, even quotes close.

    With an odd count the last quote has no partner in the row (wikitext rows sometimes cut a
    quotation); it is left as it is rather than glued to a neighbour.
    """
    parts = line.split(_DOUBLE_QUOTE)
    n_quotes = len(parts) - 1
    if n_quotes < 2:
        return line
    paired = n_quotes - n_quotes % 2
    out = [parts[0]]
    for i in range(1, len(parts)):
        piece = parts[i]
        if i <= paired:
            if i % 2:  # inside a pair: the text between an opening and a closing quote
                piece = piece.strip(" ")
            elif piece.startswith(" ") and piece[1:2] in (",", ".", ";", ":", "!", "?", ")"):
                piece = piece[1:]
        out.append(piece)
    return _DOUBLE_QUOTE.join(out)


def _detokenize_line(line: str) -> str:
    line = _AT_JOINER.sub(r"\1", line)
    line = _pair_quotes(line)
    line = _OPEN_BRACKET.sub(r"\1", line)
    line = _CLOSE_BRACKET.sub(r"\1", line)
    line = _CONTRACTION.sub(r"\1", line)
    line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
    line = _CURRENCY.sub(r"\1", line)
    return line


def clean_wikitext(text: str, normalization: str | None = "NFKC") -> str:
    """One raw wikitext document (rows joined by newlines) as it was written.

    Undoes ``@-@``/``@,@``/``@.@``, the spaces before ``, . ; : ! ? %``, before ``'s``/``n't``,
    inside brackets and inside paired double quotes; applies Unicode ``normalization`` ("NFKC",
    "NFC", "NFKD", "NFD", or None to skip); removes control and zero-width characters; collapses
    whitespace within each line. Heading rows (`` = = Gameplay = = ``) become the plain line
    ``Gameplay``. Each non-blank line stays a line; runs of blank lines become one paragraph break
    (``"\\n\\n"``), as in the original wikitext files where headings are set off by blank rows.
    """
    if normalization is not None and normalization not in ("NFC", "NFKC", "NFD", "NFKD"):
        raise ValueError(f"normalization must be NFC, NFKC, NFD, NFKD or None, not {normalization!r}")
    text = _NEWLINES.sub("\n", text)
    text = _INVISIBLE.sub("", text.replace("\t", " "))
    if normalization:
        text = unicodedata.normalize(normalization, text)
    out: list[str] = []
    blank = False
    for raw in text.split("\n"):
        line = _SPACES.sub(" ", raw).strip()
        if not line:
            blank = bool(out)
            continue
        heading = _HEADING.match(line)
        if heading and heading.group(1).count("=") == heading.group(3).count("="):
            line = heading.group(2).strip()
            if not line:
                continue
        line = _detokenize_line(line)
        if blank:
            out.append("")
            blank = False
        out.append(line)
    return "\n".join(out)


# ---------------------------------------------------------------- documents


def split_documents(rows: Iterable[str], section_headings: Literal["keep", "drop"] = "keep") -> list[str]:
    """Group wikitext rows into articles: a top-level heading `` = Title = `` starts a new one.

    Rows are joined with newlines (each row is one paragraph; blank rows ``""`` become blank
    lines). Section headings (`` = = X = = ``, `` = = = X = = = ``) stay inside their article as
    text (``"keep"``) or are removed (``"drop"``). Rows before the first title form a document of
    their own when they hold any text.
    """
    if section_headings not in ("keep", "drop"):
        raise ValueError(f"section_headings must be 'keep' or 'drop', not {section_headings!r}")
    docs: list[list[str]] = [[]]
    for row in rows:
        if row is None:
            continue
        line = row.removesuffix("\n")
        if _TITLE_ROW.match(row):
            docs.append([line])
            continue
        if section_headings == "drop" and _SECTION_ROW.match(row):
            continue
        docs[-1].append(line)
    return [joined for lines in docs if (joined := "\n".join(lines)).strip()]


# ---------------------------------------------------------------- pipeline


@dataclass
class StepReport:
    """What one cleaning step did: rows (documents) and characters going in and coming out."""

    step: str
    rows_in: int
    rows_out: int
    chars_in: int
    chars_out: int

    @property
    def rows_removed(self) -> int:
        return self.rows_in - self.rows_out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CleanConfig:
    """Parameters of :func:`clean_corpus`."""

    normalization: str | None = field(
        default="NFKC",
        metadata={"help": "Unicode normalization (NFKC folds width and compatibility forms); None skips it"},
    )
    section_headings: Literal["keep", "drop"] = field(
        default="keep", metadata={"help": "keep '= = Section = =' lines as plain text lines, or drop them"}
    )
    min_chars: int = field(default=200, metadata={"help": "documents shorter than this after cleaning are dropped"})
    near_dup_threshold: float = field(
        default=0.8,
        metadata={"help": "word-shingle Jaccard similarity at or above which a document is a near-duplicate"},
    )
    near_dup: Literal["minhash", "none"] = field(
        default="minhash", metadata={"help": "'minhash': MinHash/LSH near-duplicate removal; 'none' skips the step"}
    )
    shingle_words: int = field(default=5, metadata={"help": "words per shingle for near-duplicate detection"})
    num_perm: int = field(default=128, metadata={"help": "MinHash permutations; more is more exact and slower"})
    seed: int = field(default=1, metadata={"help": "MinHash seed: the same seed keeps the same documents"})

    def __post_init__(self) -> None:
        if self.section_headings not in ("keep", "drop"):
            raise ValueError(f"CleanConfig.section_headings must be 'keep' or 'drop', not {self.section_headings!r}")
        if self.near_dup not in ("minhash", "none"):
            raise ValueError(f"CleanConfig.near_dup must be 'minhash' or 'none', not {self.near_dup!r}")
        if not 0 < self.near_dup_threshold <= 1:
            raise ValueError(f"CleanConfig.near_dup_threshold must be in (0, 1], not {self.near_dup_threshold}")
        if self.min_chars < 0 or self.shingle_words < 1 or self.num_perm < 2:
            raise ValueError("CleanConfig: min_chars >= 0, shingle_words >= 1 and num_perm >= 2 are required")


def dedup_key(text: str) -> bytes:
    """The identity of a document for exact de-duplication: case and spacing do not count."""
    return hashlib.blake2b(" ".join(text.casefold().split()).encode("utf-8"), digest_size=16).digest()


def exact_dedup(docs: list[str]) -> list[str]:
    """First occurrence of each document, comparing case-folded text with whitespace collapsed."""
    seen: set[bytes] = set()
    out = []
    for d in docs:
        key = dedup_key(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


_WORD = re.compile(r"\w+")
_MAX_LSH_THRESHOLD = 0.9


def _shingles(text: str, k: int) -> set[bytes]:
    words = _WORD.findall(text.casefold())
    if len(words) <= k:
        return {" ".join(words).encode("utf-8")} if words else set()
    return {" ".join(words[i : i + k]).encode("utf-8") for i in range(len(words) - k + 1)}


def near_dedup(
    docs: list[str], threshold: float, *, shingle_words: int = 5, num_perm: int = 128, seed: int = 1
) -> list[str]:
    """Drop documents whose word-shingle Jaccard similarity to an earlier kept one is >= threshold.

    MinHash/LSH (datasketch) finds candidate pairs in about linear time; each candidate is then
    confirmed with the exact Jaccard similarity of the shingle sets, so LSH's false positives never
    remove a document. Documents are visited in order and the first of a group is kept, so the
    result is deterministic for a given seed.
    """
    from datasketch import MinHash, MinHashLSH

    template = MinHash(num_perm=num_perm, seed=seed)
    # LSH only proposes candidates and the exact check decides, so a lower LSH threshold changes
    # speed, never the result; above ~0.95 datasketch cannot build two bands from 128 permutations.
    lsh = MinHashLSH(threshold=min(threshold, _MAX_LSH_THRESHOLD), num_perm=num_perm)
    kept_shingles: dict[int, set[bytes]] = {}
    out = []
    for i, doc in enumerate(docs):
        sh = _shingles(doc, shingle_words)
        if not sh:
            out.append(doc)
            continue
        # A copy of the untouched template reuses its permutations instead of regenerating them.
        mh = template.copy()
        mh.update_batch(sh)
        duplicate = False
        for j in lsh.query(mh):
            other = kept_shingles[j]
            if len(sh & other) / len(sh | other) >= threshold:
                duplicate = True
                break
        if duplicate:
            continue
        lsh.insert(i, mh)
        kept_shingles[i] = sh
        out.append(doc)
    return out


def _chars(docs: Iterable[str]) -> int:
    return sum(len(d) for d in docs)


def map_documents(
    docs: list[str], fn: Callable[[str], str], desc: str, progress: bool, batch_size: int = 512
) -> list[str]:
    """``fn`` over every document through a batched ``datasets.map`` (a progress bar per step).

    The explicit fingerprint skips hashing ``fn`` (a closure datasets cannot hash reproducibly)
    and nothing is cached: the result is needed once, here.
    """
    from datasets import Dataset, disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    if not docs:
        return []
    was_enabled = is_progress_bar_enabled()
    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        out = Dataset.from_dict({"text": docs}).map(
            lambda batch: {"text": [fn(d) for d in batch["text"]]},
            batched=True,
            batch_size=batch_size,
            desc=desc,
            new_fingerprint=f"modft-{desc}-{len(docs)}",
            load_from_cache_file=False,
        )
        return out["text"]
    finally:
        (enable_progress_bars if was_enabled else disable_progress_bars)()


def _progress(items: Iterable, on: bool, desc: str, total: int | None = None):
    if not on:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, unit=" rows", mininterval=0.5)


def clean_corpus(
    rows: Iterable[str],
    config: CleanConfig,
    scrub: Callable[[str], tuple[str, int]] | None = None,
    *,
    progress: bool = False,
    total_rows: int | None = None,
    documents: bool = False,
) -> tuple[list[str], list[StepReport]]:
    """Raw wikitext rows -> clean documents, with a :class:`StepReport` for every step.

    With ``documents``, every row is a whole document already (a text file, a parquet or CSV row):
    ``split_documents`` then only drops rows without text, instead of grouping lines by their titles.

    Steps, in order: ``split_documents``, ``detokenize+normalize`` (documents empty after cleaning
    are dropped), ``pii_scrub`` (only when ``scrub`` is given; it returns the new text and its
    number of replacements), ``exact_dedup``, ``near_dedup`` (skipped when ``config.near_dup`` is
    "none"), ``min_length``. Raises ValueError naming the step that removed the last document.

    ``rows`` may be any iterable (a generator over a hub split's batches): it is read once. The
    per-document steps run as batched ``datasets.map`` calls, with progress bars when ``progress``.
    """
    reports: list[StepReport] = []
    counted = {"rows": 0, "chars": 0}

    def counting(source: Iterable[str]):
        # Rows stream through once (a hub split need not sit in a Python list); they are counted
        # as the lines they become (each with one newline), so the first step's character count
        # only falls by what it removed.
        for r in _progress(source, progress, "reading rows", total=total_rows):
            counted["rows"] += 1
            if r is not None:
                counted["chars"] += len(r) + (not r.endswith("\n"))
            yield r

    def record(
        step: str, before: list[str] | None, after: list[str], rows_in: int | None = None, chars_in: int | None = None
    ) -> None:
        reports.append(
            StepReport(
                step=step,
                rows_in=len(before) if rows_in is None else rows_in,
                rows_out=len(after),
                chars_in=_chars(before) if chars_in is None else chars_in,
                chars_out=_chars(after),
            )
        )
        if not after:
            raise ValueError(
                f"the corpus is empty after step '{step}' ({reports[-1].rows_in} rows in, 0 out); "
                + (
                    "the input has no rows"
                    if reports[-1].rows_in == 0
                    else "check the data and the cleaning parameters"
                )
            )

    if documents:
        docs = [r.replace("\r\n", "\n") for r in counting(rows) if r is not None and r.strip()]
    else:
        docs = split_documents(counting(rows), config.section_headings)
    record("split_documents", None, docs, rows_in=counted["rows"], chars_in=counted["chars"])

    normalization = config.normalization
    cleaned = [
        c
        for c in map_documents(docs, lambda d: clean_wikitext(d, normalization), "detokenize+normalize", progress)
        if c
    ]
    record("detokenize+normalize", docs, cleaned)
    docs = cleaned

    if scrub is not None:
        scrubbed = map_documents(docs, lambda d: scrub(d)[0], "pii_scrub", progress)
        record("pii_scrub", docs, scrubbed)
        docs = scrubbed

    unique = exact_dedup(docs)
    record("exact_dedup", docs, unique)
    docs = unique

    if config.near_dup == "minhash":
        distinct = near_dedup(
            docs,
            config.near_dup_threshold,
            shingle_words=config.shingle_words,
            num_perm=config.num_perm,
            seed=config.seed,
        )
        record("near_dedup", docs, distinct)
        docs = distinct

    long_enough = [d for d in docs if len(d) >= config.min_chars]
    record("min_length", docs, long_enough)
    return long_enough, reports


def report_table(reports: list[StepReport]) -> str:
    """The step reports as a fixed-width table (rows removed and the share of characters kept)."""
    header = (
        f"{'step':<22} {'rows in':>9} {'rows out':>9} {'removed':>8} {'chars in':>12} {'chars out':>12} {'kept':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in reports:
        kept = f"{100 * r.chars_out / r.chars_in:.1f}%" if r.chars_in else "-"
        lines.append(
            f"{r.step:<22} {r.rows_in:>9,} {r.rows_out:>9,} {r.rows_removed:>8,} "
            f"{r.chars_in:>12,} {r.chars_out:>12,} {kept:>7}"
        )
    return "\n".join(lines)
