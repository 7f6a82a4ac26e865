"""Figures for the notebooks: saved as PNG in the run folder and shown inline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modft_utils.adapters import loss_curves as curves


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def loss_curves(log_history: list[dict[str, Any]], title: str, path: str | Path):
    """Training and held-out loss against step, from the Trainer's log history."""
    import matplotlib.pyplot as plt

    c = curves(log_history)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if c["train"]:
        ax.plot(*zip(*c["train"]), label="train loss", marker=".")
    if c["eval"]:
        ax.plot(*zip(*c["eval"]), label="held-out loss", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return fig


def grid_bars(rows: list[dict[str, Any]], path: str | Path):
    """One panel per metric, one bar per adapter stack."""
    import matplotlib.pyplot as plt

    metrics = [
        ("domain_ppl", "domain perplexity (lower is better)"),
        *([("generic_ppl", "generic perplexity: forgetting (lower is better)")] if "generic_ppl" in rows[0] else []),
        ("exact_match", "exact match"),
        ("f1", "F1"),
        ("answer_nll", "answer NLL (lower is better)"),
    ]
    if "rouge_l" in rows[0]:
        metrics.insert([k for k, _ in metrics].index("f1") + 1, ("rouge_l", "ROUGE-L"))
    if "closed_book_f1" in rows[0]:
        metrics.append(("closed_book_exact_match", "closed-book exact match (facts from the DAPT corpus)"))
        metrics.append(("closed_book_f1", "closed-book F1 (facts from the DAPT corpus)"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.25 * len(metrics), 3.2))
    labels = [r["stack"] for r in rows]
    colors = ["#9e9e9e", "#4c78a8", "#f58518", "#54a24b"][: len(rows)]
    for ax, (key, title) in zip(axes, metrics):
        ax.bar(range(len(rows)), [r[key] for r in rows], color=colors)
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return fig
