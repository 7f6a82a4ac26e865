"""Putting right what a killed writer left in a local or remote store, and recording each repair.

Every write to the store (publish, promote, rollback, ``modft registry recover``) starts with
:func:`repair` under the adapter's lock, and each repair gets a ``recover`` record in the audit
log, so nothing changes without a trace. docs/store_guarantees.md goes through a crash at every
step of a write and which repair answers it.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from modft_utils.store.lock import now_iso, pid_alive, whoami
from modft_utils.store.records import ALIASES_FILE, MANIFEST, RegistryError, _last_moves, _ManifestIssue

# A staging folder with no owner record may be one that is being created right now.
ORPHAN_STAGING_S = 3600.0


def dead_leftovers(store, name: str) -> list[Path]:
    """Staging folders and alias temp files that no live writer owns (local stores; caller holds the lock)."""
    folder = Path(store._p(name))
    if not store.is_local or not folder.is_dir():
        return []
    host = socket.gethostname()
    dead = []
    for staging in folder.glob(".staging-*"):
        if (staging / MANIFEST).exists():
            # The manifest is written under the lock, which we hold: its writer died after it.
            dead.append(staging)
            continue
        try:
            owner = json.loads((staging / ".owner").read_text())
            stale = owner.get("host") == host and not pid_alive(int(owner["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            # No owner record yet may mean it is being created right now.
            try:
                stale = time.time() - staging.stat().st_mtime > ORPHAN_STAGING_S
            except OSError:
                continue
        if stale:
            dead.append(staging)
    # aliases.json is only replaced under the lock, so a temp file seen now belongs to a dead writer.
    dead += folder.glob(f"{ALIASES_FILE}.*.tmp")
    return sorted(dead)


def repair(store, name: str) -> list[dict[str, Any]]:
    """Put right what killed writers left, record each repair in the audit log; return the records.

    The caller holds the lock. Repairs: a torn last audit line gets its end of line and a
    ``recover`` record (readers then skip it); dead staging folders and alias temp files are
    removed; a version whose publish died before its audit line gets that line, from its
    manifest, marked ``recovered``; a move whose writer died after its audit line but before
    aliases.json changed gets a record saying it did not take effect (rollback then skips it).
    """
    now, actor = now_iso(), whoami()
    records: list[dict[str, Any]] = []
    events, damage = store.read_audit(name)
    for d in damage:
        if d.torn and d.recorded_by is None:
            records.append(
                {
                    "event": "recover",
                    "issue": "torn audit line skipped: a write was cut short",
                    "line": d.line,
                    "sha256": d.sha256,
                    "at": now,
                    "actor": actor,
                }
            )
    for leftover in dead_leftovers(store, name):
        if leftover.is_dir():
            shutil.rmtree(leftover)
            issue = "removed the staging folder of an interrupted publish"
        else:
            leftover.unlink()
            issue = "removed the temporary aliases file of an interrupted promote or rollback"
        records.append({"event": "recover", "issue": issue, "folder": leftover.name, "at": now, "actor": actor})
    published = {e["version"] for _, e in events if e["event"] == "publish"}
    for number in store.versions(name):
        if number in published:
            continue
        record: dict[str, Any] = {"event": "publish", "version": number}
        try:
            m = store._manifest(name, number)
            record.update(at=m.created_at, actor=m.created_by, note=m.note)
            if m.sealed:
                record["manifest_sha256"] = m.content_sha256()
        except (_ManifestIssue, FileNotFoundError):
            pass  # verify names the manifest; the version still gets its publish record
        record["recovered"] = f"the publish was interrupted before its audit line; recorded {now} by {actor}"
        records.append(record)
    for alias, lineno, _ in moves_not_applied(store, name, events):
        records.append(
            {
                "event": "recover",
                "issue": "move not applied: aliases.json does not show it (its writer died first, or the file was edited)",
                "move_line": lineno,
                "alias": alias,
                "at": now,
                "actor": actor,
            }
        )
    if records:
        store._append_audit(name, records)
    return records


def moves_not_applied(store, name: str, events: list[tuple[int, dict[str, Any]]]) -> list[tuple[str, int, int | None]]:
    """(alias, line, where aliases.json has it) for last moves that aliases.json does not show.

    A promote or rollback appends its audit line, then replaces aliases.json; a crash between
    the two leaves a recorded move that did not happen. An unreadable aliases.json is left to
    verify and to the next promote, which refuses it by name.
    """
    try:
        aliases = store.aliases(name)
    except RegistryError:
        return []
    return [
        (alias, lineno, aliases.get(alias))
        for alias, (lineno, event) in sorted(_last_moves(events).items())
        if aliases.get(alias) != event["to"]
    ]


__all__ = ["dead_leftovers", "moves_not_applied", "repair"]
