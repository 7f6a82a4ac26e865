"""Does the base tokenizer cover the domain? Measured on the cleaned corpus, and the decision to extend it.

Byte-level BPE never produces an unknown token; its failure mode is falling back to single bytes, so
coverage counts tokens per word, byte-fallback pieces and words cut into four or more pieces, and
:func:`decide_tokenizer` applies ``data.tokenizer_extend_threshold`` through :mod:`modft_utils.modeling.vocab`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modft_utils import modeling, runs
from modft_utils.config import Profile
from modft_utils.errors import DataError
from modft_utils.modeling import vocab

_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*", re.UNICODE)


def tokenizer_coverage(
    tokenizer, docs: list[str], *, threshold: float, top_n: int = 30, min_freq: int = 5
) -> dict[str, Any]:
    """How well the base tokenizer covers the domain, and whether to extend it.

    Byte-level BPE never produces an unknown token; its failure mode is falling back to single
    bytes, so "byte-fallback" counts pieces that are one byte symbol for a non-ASCII character.
    """
    counts = word_counts(docs)
    if not counts:
        raise DataError("tokenizer coverage: the corpus has no words")
    words = list(counts)
    pieces = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]
    n_pieces = {w: len(p) for w, p in zip(words, pieces)}
    total_words = sum(counts.values())
    total_pieces = sum(n_pieces[w] * c for w, c in counts.items())
    fallback_ids = _byte_fallback_ids(tokenizer)
    fallback = sum(c * sum(1 for t in p if t in fallback_ids) for (w, c), p in zip(counts.items(), pieces))
    split4 = sum(c for w, c in counts.items() if n_pieces[w] >= 4)
    frequent = [w for w, c in counts.items() if c >= min_freq]
    fragmented = sorted(frequent, key=lambda w: (-n_pieces[w], -counts[w], w))[:top_n]
    tpw = total_pieces / total_words
    return {
        "words": total_words,
        "unique_words": len(words),
        "tokens_per_word": tpw,
        "byte_fallback_share": fallback / total_pieces,
        "split_4plus_share": split4 / total_words,
        "most_fragmented": [{"word": w, "pieces": n_pieces[w], "count": counts[w]} for w in fragmented],
        "threshold": threshold,
        "extend": tpw > threshold,
    }


def word_counts(docs: list[str]) -> Counter:
    """How often each word (letters, with inner apostrophes or hyphens) occurs in ``docs``."""
    return Counter(w for d in docs for w in _WORD.findall(d))


@dataclass
class TokenizerDecision:
    """Coverage before (and after) extension, the extension itself, and the base/tokenizer to use."""

    coverage: dict[str, Any]
    coverage_extended: dict[str, Any] | None
    extension: Any  # vocab.VocabExtension | None
    base: Any  # modeling.BaseRef, extended when the decision says so
    tokenizer: Any

    def metrics(self) -> dict[str, Any]:
        c, e = self.coverage, self.coverage_extended
        return {
            "data.tokens_per_word": c["tokens_per_word"],
            "data.tokenizer.byte_fallback_share": c["byte_fallback_share"],
            "data.tokenizer.split_4plus_share": c["split_4plus_share"],
            "data.tokenizer.extend": c["extend"],
            "data.tokenizer.added_tokens": len(self.extension.words) if self.extension else 0,
            "data.tokenizer.tokens_per_word_extended": e["tokens_per_word"] if e else c["tokens_per_word"],
            "data.tokenizer.split_4plus_share_extended": e["split_4plus_share"] if e else c["split_4plus_share"],
        }


def decide_tokenizer(profile: Profile, base, docs: list[str], run_dir: str | Path) -> TokenizerDecision:
    """Measure coverage, extend the tokenizer if the threshold says so, and record it for the run.

    The extension (or its absence, removing a stale one) is saved in the run folder, where
    ``runs.open_run`` applies it in every later notebook.
    """

    spec = profile.data
    base = base.extended(None)
    tokenizer = modeling.load_tokenizer(base)
    coverage = tokenizer_coverage(tokenizer, docs, threshold=spec.tokenizer_extend_threshold)
    extension = None
    if coverage["extend"] and spec.tokenizer_max_new_tokens:
        extension = vocab.choose_words(
            tokenizer,
            word_counts(docs),
            max_words=spec.tokenizer_max_new_tokens,
            min_count=spec.tokenizer_min_word_count,
            min_pieces=spec.tokenizer_min_pieces,
        )
        extension = extension if extension.words else None
    vocab.save_decision(runs.folder(run_dir).vocab_extension, extension)
    if extension is None:
        return TokenizerDecision(coverage, None, None, base, tokenizer)
    base = base.extended(extension)
    tokenizer = modeling.load_tokenizer(base)
    after = tokenizer_coverage(tokenizer, docs, threshold=spec.tokenizer_extend_threshold)
    return TokenizerDecision(coverage, after, extension, base, tokenizer)


def _byte_symbols() -> dict[int, str]:
    """GPT-2's byte -> printable-symbol table, which every byte-level BPE (MiniMax-M2's too) uses."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    symbols = dict(zip(printable, map(chr, printable)))
    extra = (b for b in range(256) if b not in symbols)
    symbols.update((b, chr(256 + i)) for i, b in enumerate(extra))
    return symbols


def _byte_fallback_ids(tokenizer) -> set[int]:
    # In byte-level BPE the 256 single-symbol tokens are the raw bytes; bytes >= 0x80 on their own
    # are pieces of a character the vocabulary could not merge.
    high = {ch for b, ch in _byte_symbols().items() if b >= 0x80}
    vocab = tokenizer.get_vocab()
    return {i for tok, i in vocab.items() if len(tok) == 1 and tok in high}
