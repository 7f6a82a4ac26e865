"""The store as tables for people: every version of every adapter, and one version in full.

``modft registry list`` / ``show`` and the notebooks print these; they only read the store through
:class:`modft_utils.store.registry.Registry`'s reading methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from modft_utils.store.records import AUDIT_FILE, MOVES, WEIGHTS_FILE, IntegrityError, RegistryError


def list_table(store) -> str:
    """One row per version of every adapter: aliases, creation, parent, metrics, weights sha."""
    rows = []
    for name in store.names():
        by_version: dict[int, list[str]] = {}
        try:
            for alias, target in store.aliases(name).items():
                by_version.setdefault(target, []).append(alias)
        except RegistryError:
            pass  # shown by verify; the versions are still worth listing
        for number in store.versions(name):
            aliases = ",".join(sorted(by_version.get(number, []))) or "-"
            try:
                m = store.get(name, number).manifest
            except IntegrityError:
                # Shown, not skipped: the version is there; verify says what is wrong with it.
                rows.append([name, str(number), aliases, "?", "?", "(manifest does not verify)", "?"])
                continue
            rows.append(
                [
                    name,
                    str(number),
                    aliases,
                    _short_time(m.created_at),
                    str(m.parent) if m.parent else "-",
                    _format_values(m.metrics, limit=3) or "-",
                    m.files[WEIGHTS_FILE][:12],
                ]
            )
    if not rows:
        exists = "" if store.fs.isdir(store.root) else " (no folder yet)"
        return f"registry {store.uri} is empty{exists}"
    return _table(["NAME", "VERSION", "ALIASES", "CREATED (UTC)", "PARENT", "METRICS", "SHA256"], rows)


def show_table(store, ref) -> str:
    """Everything recorded about one version, then the last alias moves of its adapter."""
    v = store.resolve(ref)
    m = v.manifest
    aliases = sorted(a for a, target in store.aliases(v.name).items() if target == v.version)
    lora = m.adapter
    targets = lora.get("target_parameters") or lora.get("target_modules")
    rows = [
        ["adapter", str(v.ref)],
        ["aliases", ", ".join(aliases) or "-"],
        ["location", v.uri],
        ["created", f"{m.created_at} by {m.created_by}"],
        ["base", m.base.model_id or "-"],
        ["base revision", m.base.revision or "-"],
        ["base config", f"sha256 {m.base.config_sha256}"],
        ["parent", str(m.parent) if m.parent else "- (trained on the bare base)"],
        [
            "lora",
            f"{lora.get('peft_type')} r={lora.get('r')} alpha={lora.get('lora_alpha')} targets={targets}",
        ],
        ["data", m.data_fingerprint or "-"],
        ["params", _format_values(m.params) or "-"],
        ["metrics", _format_values(m.metrics) or "-"],
        ["note", m.note or "-"],
    ]
    rows += [[f"sha256 {fname}", sha] for fname, sha in sorted(m.files.items())]
    rows += [["libraries", " ".join(f"{k}={val}" for k, val in sorted(m.libraries.items()))]]
    text = _table(["FIELD", "VALUE"], rows)
    events, damage = store.read_audit(v.name)
    moves = [e for _, e in events if e["event"] in MOVES]
    if moves:
        text += "\n\n" + _table(
            ["WHEN (UTC)", "EVENT", "ALIAS", "FROM", "TO", "BY", "REASON"],
            [
                [
                    _short_time(e.get("at", "")),
                    str(e.get("event")),
                    str(e.get("alias")),
                    str(e.get("from") or "-"),
                    str(e.get("to") if e.get("to") is not None else "-"),
                    str(e.get("actor")),
                    str(e.get("reason")),
                ]
                for e in moves[-10:]
            ],
        )
    for d in damage:
        text += f"\nnote: {AUDIT_FILE} {d}; skipped" + (
            f" (recorded by line {d.recorded_by})" if d.recorded_by else ": run `modft registry verify`"
        )
    return text


def _short_time(iso: Any) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):  # a hand-edited log may hold anything here
        return str(iso)


def _format_values(values: Mapping[str, Any], limit: int | None = None) -> str:
    items = sorted(values.items())[:limit] if limit else sorted(values.items())
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
