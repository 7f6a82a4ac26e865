"""Extending the base tokenizer with domain words, and the base model with rows for them.

When notebook 01 finds the domain badly covered (``data.tokenizer.extend``), it picks the
frequent words the base tokenizer cuts into the most pieces and saves them as a
:class:`VocabExtension` in the run folder. Every later load of the base in that run applies the
same extension (``runs.open_run``), so tokenizer, embeddings and the
registry's base identity always agree:

- the tokenizer gets one added token per word, matched with its leading space as the BPE would
  write it (``" Valkyria"``), so a domain word costs one token instead of six;
- the model's input and output embeddings get a row per token (resized when the vocabulary has
  no spare rows), initialised to the mean of the rows of the pieces the word used to be cut
  into: deterministic, and a far better start than a random row;
- the model config records the extension's hash, so an adapter trained on the extended base is
  refused on the plain one and the other way round;
- the domain adapter trains those rows (PEFT ``trainable_token_indices`` on the input embedding
  and the untied LM head); only one active adapter may train embeddings, so the task adapter
  does not.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modft_utils.errors import ModftError

EXTENSION_FILE = "vocab_extension.json"
CONFIG_KEY = "modft_vocab_extension"  # recorded in the model config, so config hashes tell bases apart


class VocabError(ModftError, ValueError):
    """An extension that does not fit the tokenizer or model it is applied to."""


@dataclass(frozen=True)
class VocabExtension:
    """Domain words added to a base tokenizer, with what they replace."""

    base_tokenizer_size: int  # len(tokenizer) before the extension: the first new token id
    words: tuple[str, ...]  # each added as " " + word
    pieces: tuple[tuple[int, ...], ...]  # the base tokenizer's ids for " " + word

    @property
    def token_ids(self) -> list[int]:
        return list(range(self.base_tokenizer_size, self.base_tokenizer_size + len(self.words)))

    @property
    def sha256(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**asdict(self), "sha256": self.sha256}, indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> VocabExtension:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
            ext = cls(int(raw["base_tokenizer_size"]), tuple(raw["words"]), tuple(tuple(p) for p in raw["pieces"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise VocabError(f"{path}: not a readable vocabulary extension ({exc})") from exc
        if len(ext.words) != len(ext.pieces) or raw.get("sha256", ext.sha256) != ext.sha256:
            raise VocabError(f"{path}: words, pieces and sha256 do not agree; the file was edited or truncated")
        return ext


def choose_words(
    tokenizer, word_counts: dict[str, int], *, max_words: int, min_count: int, min_pieces: int
) -> VocabExtension:
    """The words whose own token saves the most tokens over the corpus.

    A word cut into ``p`` pieces and seen ``c`` times saves ``(p - 1) * c`` tokens; ties go to
    the alphabetically first word so the choice is reproducible.
    """
    candidates = [w for w, c in word_counts.items() if c >= min_count]
    ids = tokenizer([" " + w for w in candidates], add_special_tokens=False)["input_ids"] if candidates else []
    scored = [((len(p) - 1) * word_counts[w], w, tuple(p)) for w, p in zip(candidates, ids) if len(p) >= min_pieces]
    scored.sort(key=lambda t: (-t[0], t[1]))
    chosen = scored[:max_words]
    return VocabExtension(len(tokenizer), tuple(w for _, w, _ in chosen), tuple(p for _, _, p in chosen))


def extend_tokenizer(tokenizer, ext: VocabExtension):
    """Add the extension's words to ``tokenizer`` (in place) and check they got the expected ids."""
    from tokenizers import AddedToken

    if len(tokenizer) != ext.base_tokenizer_size:
        raise VocabError(
            f"the extension was made for a tokenizer of {ext.base_tokenizer_size} tokens, this one has {len(tokenizer)}: "
            "it belongs to another base (re-run notebook 01 for this profile)"
        )
    # normalized=False: matched on the raw text, leading space included, as the BPE writes words.
    tokenizer.add_tokens([AddedToken(" " + w, normalized=False) for w in ext.words])
    got = tokenizer.convert_tokens_to_ids([" " + w for w in ext.words])
    if got != ext.token_ids:
        raise VocabError(f"added tokens got ids {got[:5]}..., expected {ext.token_ids[:5]}...")
    return tokenizer


def extend_model(model, ext: VocabExtension) -> None:
    """Give ``model`` a row per added token, initialised to the mean of the word's old pieces."""
    import torch

    if getattr(model.config, CONFIG_KEY, None) is not None:
        raise VocabError("this model is already extended")
    if not ext.words:
        return
    rows = model.get_input_embeddings().weight.shape[0]
    needed = ext.base_tokenizer_size + len(ext.words)
    if needed > rows:
        # mean_resizing=False: the new rows are set below, deterministically, from the pieces.
        model.resize_token_embeddings(needed, mean_resizing=False)
    with torch.no_grad():
        for emb in _embedding_matrices(model):
            for token_id, piece_ids in zip(ext.token_ids, ext.pieces):
                emb[token_id] = emb[list(piece_ids)].mean(dim=0)
    setattr(model.config, CONFIG_KEY, ext.sha256)


def _untied_output(model):
    """The output embedding when it is its own matrix (MiniMax-M2's LM head is), else None."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    return out if out is not None and out.weight.data_ptr() != inp.weight.data_ptr() else None


def _embedding_matrices(model) -> list:
    out = _untied_output(model)
    return [model.get_input_embeddings().weight] + ([out.weight] if out is not None else [])


def trainable_token_indices(model, ext: VocabExtension | None) -> dict[str, list[int]] | None:
    """PEFT ``trainable_token_indices`` for the new rows: input embedding, and the LM head when untied."""
    if ext is None or not ext.words:
        return None
    names = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n}
    targets = {names[id(model.get_input_embeddings())]: ext.token_ids}
    out = _untied_output(model)
    if out is not None:
        targets[names[id(out)]] = ext.token_ids
    return targets


def save_decision(path: str | os.PathLike, ext: VocabExtension | None) -> Path | None:
    """Record a run's extension at ``path``, or remove a stale one when the run does not extend."""
    path = Path(path)
    if ext is None or not ext.words:
        path.unlink(missing_ok=True)
        return None
    return ext.save(path)


def load_decision(path: str | os.PathLike) -> VocabExtension | None:
    """The extension recorded at ``path`` (a run folder's ``vocab_extension``), or None when there is none."""
    path = Path(path)
    return VocabExtension.load(path) if path.is_file() else None


def describe(ext: VocabExtension | None, limit: int = 15) -> dict[str, Any]:
    if ext is None:
        return {"added_tokens": 0}
    return {
        "added_tokens": len(ext.words),
        "first_id": ext.base_tokenizer_size,
        "examples": [f"{w}({len(p)}->1)" for w, p in list(zip(ext.words, ext.pieces))[:limit]],
    }
