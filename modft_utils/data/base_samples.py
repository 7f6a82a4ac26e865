"""General text for replay when the base's own pretraining text is not at hand: samples from the base.

Training on text the base itself generates (self-synthesized rehearsal, Huang et al., ACL 2024,
arXiv:2403.01244) needs no corpus beside the domain's. With ``data.replay_loss: distill`` the samples
are only where the base's next-token distributions are read, so their content matters less than that
they are the kind of text the base writes when nothing steers it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from modft_utils import modeling
from modft_utils.config import Profile
from modft_utils.errors import DataError


def write_base_samples(
    profile: Profile, out: str | Path, texts: int, *, new_tokens: int = 160, seed: int = 0, batch: int = 32
) -> Path:
    """``texts`` continuations of the base's BOS token (EOS where it has none), sampled at temperature 1
    with no top-k or top-p (the base's own distribution), as a JSON-lines ``{"text"}`` file for
    ``data.replay_file``. The same profile, ``seed`` and machine give the same file."""
    if texts < 1 or new_tokens < 1:
        raise DataError(f"base samples: texts ({texts}) and new_tokens ({new_tokens}) must be at least 1")
    base = modeling.ensure_base(profile, progress=False)
    tokenizer = modeling.load_tokenizer(base)
    model = modeling.load_base(profile, base).eval()
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    rows: list[str] = []
    with torch.no_grad():
        for first in range(0, texts, batch):
            ids = torch.full((min(batch, texts - first), 1), start)
            out_ids = model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=new_tokens, pad_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
            rows += [t.strip() for t in tokenizer.batch_decode(out_ids[:, 1:], skip_special_tokens=True)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows if t))
    return out
