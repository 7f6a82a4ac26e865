"""``modft registry verify``: re-hash a store and check its records against each other.

What it reports is a :class:`~modft_utils.store.records.Problem` per fault, naming the adapter,
the version and the file: a weight or manifest whose bytes changed, a manifest that is not the one
its publish record sealed (a format 1 rewrite of a sealed one included), a published version that is
gone, two publish records of one number, a parent that is not the manifest its child was trained
on, an alias pointing at nothing or where no recorded move put it, an audit line that holds no
event, a symbolic link, a stray entry in ``versions/``. Notes are what it accepts but a person should
know: recovered audit lines, unsealed manifests, the leftovers of a killed publish. It reads the
store through :class:`~modft_utils.store.registry.Registry`'s reading helpers and writes nothing.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

from modft_utils.store import recovery
from modft_utils.store.records import (
    _NAME_RE,
    _VERSION_RE,
    ALIASES_FILE,
    AUDIT_FILE,
    MANIFEST,
    NAME_MAX,
    Manifest,
    Problem,
    RegistryError,
    StoreLinkError,
    _check_files,
    _ManifestIssue,
    check_name,
    link_issue,
)

# What a folder holds once the store has written to it: an adapter even when all its versions are gone.
_ADAPTER_MARKS = ("versions", AUDIT_FILE, ALIASES_FILE)


def adapters(store) -> list[str]:
    """Every adapter folder of the store, with versions or not: a deleted ``versions/`` is still checked."""
    try:
        entries = store.fs.ls(store.root, detail=True)
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        base = posixpath.basename(entry["name"].rstrip("/"))
        if not (_NAME_RE.match(base) and len(base) <= NAME_MAX):
            continue
        if entry.get("islink") or (
            entry["type"] == "directory" and any(store.fs.exists(store._p(base, m)) for m in _ADAPTER_MARKS)
        ):
            found.append(base)
    return sorted(found)


def _names(store, name: str | None) -> list[str]:
    if not store.fs.isdir(store.root):
        raise RegistryError(f"registry {store.uri} does not exist: nothing to verify (is the path right?)")
    known = adapters(store)
    if name is not None:
        if check_name(name) not in known:
            store._require(name)
        return [name]
    if not known:
        raise RegistryError(f"registry {store.uri} holds no adapter version: nothing to verify")
    return known


def verify(store, name: str | None = None) -> list[Problem]:
    """Re-hash every file and manifest of every version (of ``name``, or of all adapters); [] when intact.

    Also checks each manifest against its publish record, each parent pin, the aliases against
    the log, the audit log (a line that holds no event and is not accounted for by a ``recover``
    record), links, and the entries of ``versions/``. A store that does not exist or holds no
    adapter is an error, not a pass.
    """
    problems: list[Problem] = []
    for adapter in _names(store, name):
        problems += _check(store, adapter, hash_files=True)[0]
    return problems


def verify_notes(store, name: str | None = None) -> list[str]:
    """What :func:`verify` accepts but a person should know: recovered audit lines, unsealed manifests, leftovers."""
    notes: list[str] = []
    for adapter in _names(store, name):
        notes += _check(store, adapter, hash_files=False)[1]
    return notes


def _links(store, adapter: str) -> list[Problem]:
    """Every symbolic link in a local adapter folder (not followed: a linked folder is named, not entered)."""
    folder = store._p(adapter)
    hint = "the store neither reads, writes nor deletes through a link: put the real file back or remove the link"
    if os.path.islink(folder):
        return [Problem(adapter, None, adapter, f"{link_issue(folder)}; {hint}")]
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for entry in sorted(dirnames + filenames):
            path = os.path.join(dirpath, entry)
            if not os.path.islink(path):
                continue
            parts = os.path.relpath(path, folder).split(os.sep)
            in_version = len(parts) > 2 and parts[0] == "versions" and _VERSION_RE.match(parts[1])
            version = int(parts[1]) if in_version else None
            rel = "/".join(parts[2:] if in_version else parts)
            found.append(Problem(adapter, version, rel, f"{link_issue(path)}; {hint}"))
    return found


def _check(store, adapter: str, *, hash_files: bool) -> tuple[list[Problem], list[str]]:
    """(problems, notes) of one adapter."""
    if store.is_local:
        links = _links(store, adapter)
        if links:
            # Every other check would read through them, or refuse to: the links come first.
            return links, []
    try:
        return _check_adapter(store, adapter, hash_files=hash_files)
    except StoreLinkError as err:  # made between the scan and the read
        return [Problem(adapter, None, adapter, str(err))], []


def _check_adapter(store, adapter: str, *, hash_files: bool) -> tuple[list[Problem], list[str]]:
    problems: list[Problem] = []
    notes: list[str] = []
    # Everything else is judged against the log and the versions: without them, only that is said.
    try:
        events, damage = store.read_audit(adapter)
    except RegistryError as err:
        return [Problem(adapter, None, AUDIT_FILE, str(err))], []
    try:
        dirs = store._version_dirs(adapter)
    except RegistryError as err:
        return [Problem(adapter, None, "versions", str(err))], []
    visible = sorted(n for n, ok in dirs.items() if ok)
    publish_records: dict[int, list[tuple[int, str | None]]] = {}
    for lineno, e in events:
        if e["event"] == "publish":
            publish_records.setdefault(e["version"], []).append((lineno, e.get("manifest_sha256")))
    lost = {e["version"]: lineno for lineno, e in events if e["event"] == "lost"}
    unrecorded = dict(recovery.unrecorded_versions(store, adapter, events))

    for number in visible:
        try:
            manifest = store._manifest(adapter, number)
        except _ManifestIssue as err:
            problems.append(Problem(adapter, number, MANIFEST, str(err)))
            continue
        if hash_files:
            problems += _check_files(store.fs, store._p(adapter, "versions", str(number)), manifest, adapter, number)
        records = publish_records.get(number, [])
        if not records:
            problems.append(_unrecorded(adapter, number, unrecorded.get(number, True)))
        else:
            problems += _check_publish_record(adapter, manifest, records)
            if not any(sha for _, sha in records) and not manifest.sealed:
                notes.append(
                    f"{adapter}@{number}: {MANIFEST}: format {manifest.format}, written before manifests "
                    "carried their own sha256: its base, parent, params and metrics are not checked"
                )
        problem, note = _check_parent(store, adapter, manifest)
        problems += problem
        notes += note

    for number, records in sorted(publish_records.items()):
        hashes = sorted({sha for _, sha in records if sha})
        lines = ", ".join(str(lineno) for lineno, _ in records)
        if len(hashes) > 1:
            problems.append(
                Problem(
                    adapter,
                    number,
                    AUDIT_FILE,
                    f"{len(records)} publish records of version {number} with different manifest sha256 "
                    f"(lines {lines}: {', '.join(h[:16] + '...' for h in hashes)}): a number is issued once, so "
                    "at most one of them is true; find out which, and fix the log by hand",
                )
            )
        elif len(records) > 1:
            notes.append(f"{adapter}@{number}: {AUDIT_FILE}: recorded {len(records)} times (lines {lines}), alike")
        if number in visible:
            continue
        if number in lost:
            notes.append(
                f"{adapter}@{number}: lost (recorded at {AUDIT_FILE} line {lost[number]}); its number stays taken"
            )
            continue
        gone = f"its {MANIFEST} is missing or not a file" if number in dirs else "its folder is gone"
        problems.append(
            Problem(
                adapter,
                number,
                f"versions/{number}",
                f"published ({AUDIT_FILE} line {records[0][0]}) but {gone}: restore it from a backup (its number "
                f"is never issued again), or record the loss with `modft registry settle {adapter} --lost {number} "
                "--reason TEXT`",
            )
        )

    for number in sorted(n for n, ok in dirs.items() if not ok and n not in publish_records):
        where = f"versions/{number}"
        if store.is_local:
            # A local publish renames a complete folder into place: no crash leaves one without a manifest.
            problems.append(
                Problem(adapter, number, where, f"not a version: no {MANIFEST} and no publish record; move it out")
            )
        else:
            notes.append(
                f"{adapter}: {where}: no {MANIFEST}, left by a publish killed before it; "
                "nothing reads it and the next publish reuses its number"
            )
    for stray in store._stray_versions(adapter):
        problems.append(
            Problem(
                adapter,
                None,
                f"versions/{stray}",
                "not a version folder (those are named 1, 2, 3, ...); move it out of the store",
            )
        )
    problems += _check_aliases(store, adapter, events, set(visible))
    for d in damage:
        if d.recorded_by is None:
            hint = (
                f"; the next write, or `modft registry recover {adapter}`, records and skips it"
                if d.torn
                else "; fix or delete that line by hand"
            )
            problems.append(Problem(adapter, None, AUDIT_FILE, f"{d}{hint}"))
        else:
            notes.append(f"{adapter}: {AUDIT_FILE}: {d}; skipped (recorded by line {d.recorded_by})")
    for leftover in recovery.dead_leftovers(store, adapter):
        notes.append(
            f"{adapter}: {leftover.name}: left by a publish, promote or rollback that is no longer running; "
            f"invisible to readers; `modft registry recover {adapter}` (or the next write) removes it"
        )
    return problems, notes


def _unrecorded(adapter: str, number: int, crash: bool) -> Problem:
    if crash:
        issue = (
            "no publish record: the publish was interrupted after its version appeared; "
            f"the next write, or `modft registry recover {adapter}`, records it"
        )
    else:
        issue = (
            "no publish record, and it is not the last publish, which is all a crash leaves (the log edited or "
            f"deleted?); writes wait: restore {AUDIT_FILE}, or `modft registry settle {adapter} --adopt --reason TEXT`"
        )
    return Problem(adapter, number, AUDIT_FILE, issue)


def _check_publish_record(name: str, manifest: Manifest, records: list[tuple[int, str | None]]) -> list[Problem]:
    """The manifest against the sha256 its publish record sealed, whatever format the manifest claims now."""
    sealed = [(lineno, sha) for lineno, sha in records if sha]
    actual = manifest.content_sha256()
    if not sealed or any(sha == actual for _, sha in sealed):
        return []
    lineno, sha = sealed[-1]
    if not manifest.sealed:
        issue = (
            f"format {manifest.format}, without a manifest_sha256 of its own, but its publish record "
            f"({AUDIT_FILE} line {lineno}) sealed it with sha256 {sha[:16]}...: a sealed manifest rewritten "
            "in the old format, so that its content would go unchecked"
        )
    else:
        issue = (
            f"not the manifest recorded when it was published ({AUDIT_FILE} line {lineno}: "
            f"sha256 {sha[:16]}..., now {actual[:16]}...)"
        )
    return [Problem(name, manifest.version, MANIFEST, issue)]


def _check_parent(store, adapter: str, manifest: Manifest) -> tuple[list[Problem], list[str]]:
    """A pinned parent must still be the manifest its child was trained on."""
    parent = manifest.parent
    if parent is None:
        return [], []
    if parent.manifest_sha256 is None:
        return [], [
            f"{adapter}@{manifest.version}: parent {parent} recorded by number only (published before parents "
            "were pinned by manifest sha256): a replaced parent folder would not be noticed"
        ]
    try:
        found = store.get(parent.name, parent.version)
    except RegistryError as err:
        return [Problem(adapter, manifest.version, MANIFEST, f"its parent {parent} cannot be read: {err}")], []
    if found.manifest_sha256 != parent.manifest_sha256:
        return [
            Problem(
                adapter,
                manifest.version,
                MANIFEST,
                f"trained on {parent.describe()}, but {parent} in the store now has manifest sha256 "
                f"{found.manifest_sha256[:16]}...: not the parent it was trained on",
            )
        ], []
    return [], []


def _check_aliases(store, adapter: str, events: list[tuple[int, dict[str, Any]]], visible: set[int]) -> list[Problem]:
    try:
        aliases = store.aliases(adapter)
    except RegistryError as err:
        return [Problem(adapter, None, ALIASES_FILE, str(err))]
    problems = [
        Problem(adapter, None, ALIASES_FILE, f"alias {alias!r} points at version {target}, which does not exist")
        for alias, target in sorted(aliases.items())
        if target not in visible
    ]
    for d in recovery.alias_drift(store, adapter, events):
        if d.crash:
            issue = (
                f"alias {d.alias!r} is at {d.file if d.file is not None else 'nothing'} but its last move "
                f"({AUDIT_FILE} line {d.line}) does not show there: its writer died in between; the next "
                f"write, or `modft registry recover {adapter}`, records that it did not take effect"
            )
        else:
            issue = d.describe(adapter)
        problems.append(Problem(adapter, None, ALIASES_FILE, issue))
    return problems


__all__ = ["adapters", "verify", "verify_notes"]
