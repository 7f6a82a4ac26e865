"""Putting right what a killed writer left in a local or remote store, and refusing what no crash leaves.

Every write to the store (publish, promote, rollback, settle, ``modft registry recover``) starts with
:func:`repair` under the adapter's lock. A repair is made only for what a killed writer can leave,
and each gets a record in the audit log, so nothing changes without a trace. What no crash leaves
(an ``aliases.json`` edited or deleted by hand, publish records missing from the middle of the log)
is not repaired: it raises :class:`~modft_utils.store.records.UnsettledError`, which names what the
log says, what the files say, and the ``modft registry settle`` command by which a person decides.
docs/store_guarantees.md goes through a crash at every step of a write and which repair answers it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modft_utils.store.lock import now_iso, pid_alive, whoami
from modft_utils.store.records import (
    ALIASES_FILE,
    AUDIT_FILE,
    MANIFEST,
    MOVES,
    RegistryError,
    UnsettledError,
    _last_moves,
    _ManifestIssue,
)

# The events written by a store write, each after recovery ran: what can follow a killed move.
STORE_WRITES = ("publish", *MOVES, "lost")

# A staging folder with no owner record may be one that is being created right now.
ORPHAN_STAGING_S = 3600.0


@dataclass(frozen=True)
class AliasDrift:
    """An alias where ``aliases.json`` does not show what the audit log says.

    ``logged`` is where the log's last move of the alias (at ``line``; None when the log never
    moved it) left it, ``file`` where aliases.json has it (None: not there). ``crash`` is True
    only for what a writer killed between its audit line and aliases.json leaves: that move is the
    last store write in the log, the alias still holds the move's ``from``, and no other alias drifts.
    """

    alias: str
    logged: int | None
    line: int | None
    file: int | None
    crash: bool

    def describe(self, name: str) -> str:
        """The alias, what the log says, what the file says, and the command that settles it."""
        logged = f"{self.logged}" if self.logged is not None else "no version"
        where = f" ({AUDIT_FILE} line {self.line})" if self.line is not None else " (the log never moved it)"
        file = f"{self.file}" if self.file is not None else "nothing (the alias is missing)"
        return (
            f"alias {self.alias!r}: the audit log says {logged}{where}, {ALIASES_FILE} says {file}. No crash "
            "leaves that (a hand edit or a deleted file?), so writes to this adapter wait for a decision: "
            f"`modft registry settle {name} {self.alias} --to {_to(self.logged)} --reason TEXT` keeps the logged "
            f"version, `--to {_to(self.file)}` keeps the file"
        )


def _to(version: int | None) -> str:
    return "none" if version is None else str(version)


def alias_drift(store, name: str, events: list[tuple[int, dict[str, Any]]]) -> list[AliasDrift]:
    """Every alias where aliases.json and the audit log disagree, each marked whether a crash explains it.

    A promote, rollback or settle appends its audit line, then replaces aliases.json; a crash
    between the two leaves a logged move that did not happen, and the alias at the move's
    ``from``, and every other alias where its last move put it. Anything else was done by hand. An unreadable aliases.json is left to verify and to
    the next promote, which refuses it by name.
    """
    try:
        aliases = store.aliases(name)
    except RegistryError:
        return []
    last = _last_moves(events)
    # Only the store's own writes run recovery first; a note (Registry.note) after a killed move
    # leaves it the last write all the same.
    last_line = max((lineno for lineno, e in events if e["event"] in STORE_WRITES), default=None)
    drift = []
    for alias in sorted(set(aliases) | set(last)):
        line, event = last.get(alias, (None, None))
        logged = event["to"] if event is not None else None
        file = aliases.get(alias)
        if file == logged:
            continue
        crash = event is not None and line == last_line and file == event.get("from")
        drift.append(AliasDrift(alias, logged, line, file, crash))
    if len(drift) > 1:
        # A killed writer leaves one alias behind; a second means aliases.json was edited or deleted.
        drift = [replace(d, crash=False) for d in drift]
    return drift


def unrecorded_versions(store, name: str, events: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, bool]]:
    """(version, whether a crash explains it) for visible versions without a publish record.

    A publish killed after its version appeared and before its audit line leaves one such version:
    the highest, above every number the log has published. Any other was hidden by an edit of the
    log, or its deletion.
    """
    published = {e["version"] for _, e in events if e["event"] == "publish"}
    visible = store.versions(name)
    top = max(published, default=0)
    return [(n, n == visible[-1] and n > top) for n in visible if n not in published]


def unsettled(store, name: str, events: list[tuple[int, dict[str, Any]]]) -> list[str]:
    """What no crash explains and a person must settle, one message each; [] when writes may go ahead."""
    found = [f"{name}: {d.describe(name)}" for d in alias_drift(store, name, events) if not d.crash]
    for number, crash in unrecorded_versions(store, name, events):
        if not crash:
            found.append(
                f"{name}@{number}: no publish record in {AUDIT_FILE}, and it is not the last publish, which is "
                f"all a crash leaves (the log edited or deleted?): restore {AUDIT_FILE} from a backup, or record "
                f"the version as it stands with `modft registry settle {name} --adopt --reason TEXT`"
            )
    return found


def dead_leftovers(store, name: str) -> list[Path]:
    """Staging folders and alias temp files that no live writer owns (local stores; caller holds the lock).

    A link is never a leftover: removing what it points at would delete outside the store
    (verify names it instead).
    """
    folder = Path(store._p(name))
    if not store.is_local or folder.is_symlink() or not folder.is_dir():
        return []
    host = socket.gethostname()
    dead = []
    for staging in folder.glob(".staging-*"):
        if staging.is_symlink() or not staging.is_dir():
            continue
        if _is_file(staging / MANIFEST):
            # The manifest is written under the lock, which we hold: its writer died after it.
            dead.append(staging)
            continue
        try:
            owner_file = staging / ".owner"
            if owner_file.is_symlink():
                raise ValueError("a link")
            owner = json.loads(owner_file.read_text())
            stale = owner.get("host") == host and not pid_alive(int(owner["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            # No owner record yet may mean it is being created right now.
            try:
                stale = time.time() - staging.lstat().st_mtime > ORPHAN_STAGING_S
            except OSError:
                continue
        if stale:
            dead.append(staging)
    # aliases.json is only replaced under the lock, so a temp file seen now belongs to a dead writer.
    dead += [p for p in folder.glob(f"{ALIASES_FILE}.*.tmp") if not p.is_symlink() and p.is_file()]
    return sorted(dead)


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def repair(store, name: str, *, block: bool = True) -> list[dict[str, Any]]:
    """Put right what killed writers left, record each repair in the audit log; return the records.

    The caller holds the lock. Repairs: a torn last audit line gets its end of line and a
    ``recover`` record (readers then skip it); dead staging folders and alias temp files are
    removed; the version whose publish died before its audit line gets that line, from its
    manifest, marked ``recovered``; a move whose writer died after its audit line but before
    aliases.json changed gets a record saying it did not take effect (rollback then skips it).

    With ``block`` (every write but settle), what no crash explains raises UnsettledError
    before anything is written; settle passes ``block=False`` and repairs only the crash leftovers.
    """
    now, actor = now_iso(), whoami()
    records: list[dict[str, Any]] = []
    events, damage = store.read_audit(name)
    if block:
        found = unsettled(store, name, events)
        if found:
            raise UnsettledError("\n".join(found))
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
            shutil.rmtree(leftover)  # it is no link (dead_leftovers); links inside are removed, not followed
            issue = "removed the staging folder of an interrupted publish"
        else:
            leftover.unlink()
            issue = "removed the temporary aliases file of an interrupted promote or rollback"
        records.append({"event": "recover", "issue": issue, "folder": leftover.name, "at": now, "actor": actor})
    for number, crash in unrecorded_versions(store, name, events):
        if crash:
            record = publish_record_from_manifest(store, name, number)
            record["recovered"] = f"the publish was interrupted before its audit line; recorded {now} by {actor}"
            records.append(record)
    for d in alias_drift(store, name, events):
        if d.crash:
            records.append(
                {
                    "event": "recover",
                    "issue": "move not applied: its writer died after its audit line, before aliases.json changed",
                    "move_line": d.line,
                    "alias": d.alias,
                    "at": now,
                    "actor": actor,
                }
            )
    if records:
        store._append_audit(name, records)
    return records


def publish_record_from_manifest(store, name: str, number: int) -> dict[str, Any]:
    """The publish record of version ``number``, written afterwards from its manifest."""
    record: dict[str, Any] = {"event": "publish", "version": number}
    try:
        m = store._manifest(name, number)
        record.update(at=m.created_at, actor=m.created_by, note=m.note)
        if m.sealed:
            record["manifest_sha256"] = m.content_sha256()
    except (_ManifestIssue, FileNotFoundError):
        pass  # verify names the manifest; the version still gets its publish record
    return record


def describe(name: str, record: dict[str, Any]) -> str:
    """One line for a person about a repair record (what the CLI prints after every write)."""
    if record["event"] == "publish":
        return f"{name}: recorded the interrupted publish of {name}@{record['version']}"
    if "move_line" in record:
        return (
            f"{name}: recorded that the move of {record['alias']!r} at audit line {record['move_line']} "
            "did not take effect (its writer died before aliases.json)"
        )
    if "line" in record:
        return f"{name}: recorded torn audit line {record['line']} (skipped from now on)"
    return f"{name}: {record['issue']} ({record.get('folder')})"


__all__ = [
    "AliasDrift",
    "alias_drift",
    "dead_leftovers",
    "describe",
    "publish_record_from_manifest",
    "repair",
    "unrecorded_versions",
    "unsettled",
]
