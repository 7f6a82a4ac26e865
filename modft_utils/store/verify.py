"""``modft registry verify``: re-hash a store and check its records against each other.

What it reports is a :class:`~modft_utils.store.records.Problem` per fault, naming the adapter,
the version and the file: a weight or manifest whose bytes changed, a manifest that is not the one
its publish record sealed, an alias pointing at nothing, an alias move its writer did not finish, an
audit line that holds no event, a stray entry in ``versions/``. It reads the store through
:class:`~modft_utils.store.registry.Registry`'s reading helpers and writes nothing.
"""

from __future__ import annotations

from modft_utils.store import recovery
from modft_utils.store.records import (
    ALIASES_FILE,
    AUDIT_FILE,
    MANIFEST,
    Manifest,
    Problem,
    RegistryError,
    _check_files,
    _ManifestIssue,
    check_name,
)


def verify(store, name: str | None = None) -> list[Problem]:
    """Re-hash every file and manifest of every version (of ``name``, or of all adapters); [] when intact.

    Also checks each manifest against its publish record, the aliases, the audit log (a line
    that holds no event and is not accounted for by a ``recover`` record), and the entries of
    ``versions/``. A store that does not exist or holds no version is an error, not a pass.
    """
    if not store.fs.isdir(store.root):
        raise RegistryError(f"registry {store.uri} does not exist: nothing to verify (is the path right?)")
    if name is not None:
        store._require(check_name(name))
        names = [name]
    else:
        names = store.names()
        if not names:
            raise RegistryError(f"registry {store.uri} holds no adapter version: nothing to verify")
    problems: list[Problem] = []
    for adapter in names:
        events, damage = store.read_audit(adapter)
        publish_records: dict[int, list[tuple[int, str | None]]] = {}
        for lineno, e in events:
            if e["event"] == "publish":
                publish_records.setdefault(e["version"], []).append((lineno, e.get("manifest_sha256")))
        for number in store.versions(adapter):
            try:
                manifest = store._manifest(adapter, number)
            except _ManifestIssue as err:
                problems.append(Problem(adapter, number, MANIFEST, str(err)))
                continue
            folder = store._p(adapter, "versions", str(number))
            problems += _check_files(store.fs, folder, manifest, adapter, number)
            problems += _check_publish_record(adapter, manifest, publish_records.get(number, []))
        for stray in store._stray_versions(adapter):
            problems.append(
                Problem(
                    adapter,
                    None,
                    f"versions/{stray}",
                    "not a version folder (those are named 1, 2, 3, ...); move it out of the store",
                )
            )
        try:
            aliases = store.aliases(adapter)
        except RegistryError as err:
            problems.append(Problem(adapter, None, ALIASES_FILE, str(err)))
            aliases = {}
        visible = set(store.versions(adapter))
        for alias, target in sorted(aliases.items()):
            if target not in visible:
                problems.append(
                    Problem(
                        adapter,
                        None,
                        ALIASES_FILE,
                        f"alias {alias!r} points at version {target}, which does not exist",
                    )
                )
        for alias, lineno, now_at in recovery.moves_not_applied(store, adapter, events):
            problems.append(
                Problem(
                    adapter,
                    None,
                    ALIASES_FILE,
                    f"alias {alias!r} is at {now_at if now_at is not None else 'nothing'} but its last move "
                    f"({AUDIT_FILE} line {lineno}) does not show there: its writer died in between; the next "
                    f"write, or `modft registry recover {adapter}`, records that it did not take effect",
                )
            )
        for d in damage:
            if d.recorded_by is None:
                hint = (
                    f"; the next write, or `modft registry recover {adapter}`, records and skips it"
                    if d.torn
                    else "; fix or delete that line by hand"
                )
                problems.append(Problem(adapter, None, AUDIT_FILE, f"{d}{hint}"))
    return problems


def _check_publish_record(name: str, manifest: Manifest, records: list[tuple[int, str | None]]) -> list[Problem]:
    if not records:
        return [
            Problem(
                name,
                manifest.version,
                AUDIT_FILE,
                "no publish record: the publish was interrupted after its version appeared; "
                f"the next write, or `modft registry recover {name}`, records it",
            )
        ]
    sealed = [(lineno, sha) for lineno, sha in records if sha]
    actual = manifest.content_sha256()
    if manifest.sealed and sealed and all(sha != actual for _, sha in sealed):
        lineno, sha = sealed[-1]
        return [
            Problem(
                name,
                manifest.version,
                MANIFEST,
                f"not the manifest recorded when it was published ({AUDIT_FILE} line {lineno}: "
                f"sha256 {sha[:16]}..., now {actual[:16]}...)",
            )
        ]
    return []


def verify_notes(store, name: str | None = None) -> list[str]:
    """What :meth:`verify` accepts but a person should know: recovered audit lines, unsealed manifests."""
    notes = []
    for adapter in [name] if name is not None else store.names():
        for d in store.audit_damage(adapter):
            if d.recorded_by is not None:
                notes.append(f"{adapter}: {AUDIT_FILE}: {d}; skipped (recorded by line {d.recorded_by})")
        for number in store.versions(adapter):
            try:
                manifest = store._manifest(adapter, number)
            except _ManifestIssue:
                continue
            if not manifest.sealed:
                notes.append(
                    f"{adapter}@{number}: {MANIFEST}: format {manifest.format}, written before manifests "
                    "carried their own sha256: its base, parent, params and metrics are not checked"
                )
    return notes


__all__ = ["verify", "verify_notes"]
