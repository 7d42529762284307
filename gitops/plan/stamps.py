"""Live stamps: what the live cache keeps of an object, and when a stamp settles a plan item. Pure.

A stamp holds an object's resourceVersion, its provenance (source, commit, the
content hash Sluice applied) and one bit: whether the object still holds what
Sluice applied (``as_applied``), that is whether the content Sluice compares
(data, binaryData, immutable, and the labels and annotations Sluice's own
server-side apply owns) hashes to the ``sluice.dev/content-hash`` Sluice wrote
beside it. An edit by anyone else, to data or to a label or annotation Sluice
set, breaks that bit, because an edit either changes a compared value or takes
its ownership away from Sluice.

``settles`` says when a stamp alone proves the planner's verdict "unchanged":
the object is this source's, in its inventory, as Sluice applied it, and what
Sluice applied is Git's content now. Flag sets are always read: their published
document carries stamps the planner compares too.
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from gitops.desired.content import KIND_LABEL, Content
from gitops.desired.flags import COMMIT_METADATA_KEY, SOURCE_METADATA_KEY
from gitops.desired.revision import (
    DesiredObject,
    ObjectKey,
    flag_set_json,
    flag_set_json_sorted,
    flag_set_key,
    live_document,
)
from gitops.plan.provenance import live_content, live_provenance

ORIGIN_STAMPS = (COMMIT_METADATA_KEY, SOURCE_METADATA_KEY)
FLAG_SET_KIND = "flagset"
# Separates a stamp's fields in its stored form; never part of a label value or a hash.
FIELD_SEPARATOR = "\x1f"


class LiveStamp(NamedTuple):
    """A tuple, not a dataclass: a plan of 10,000 objects decodes 10,000 of them."""

    resource_version: str
    source: str  # the sluice.dev/source label of an object managed by Sluice, else ""
    commit: str  # the sluice.dev/commit annotation
    applied_hash: str  # the sluice.dev/content-hash annotation
    as_applied: bool  # the compared content still hashes to applied_hash

    def encode(self) -> str:
        fields = (self.resource_version, self.source, self.commit, self.applied_hash)
        cleaned = [value.replace(FIELD_SEPARATOR, "") for value in fields]
        return FIELD_SEPARATOR.join([*cleaned, "1" if self.as_applied else "0"])

    @classmethod
    def decode(cls, text: str) -> LiveStamp | None:
        """The stamp ``encode`` wrote; None for anything else (it is then read from the cluster)."""
        fields = text.split(FIELD_SEPARATOR)
        if len(fields) != 5 or fields[4] not in ("0", "1"):
            return None
        return cls(fields[0], fields[1], fields[2], fields[3], fields[4] == "1")


def stamp_of(live: Mapping[str, Any]) -> LiveStamp:
    """The stamp of a live object, as the apiserver returned it."""
    metadata = live.get("metadata") or {}
    source, commit, applied_hash = live_provenance(live)
    try:
        as_applied = bool(source) and applied_hash is not None and _holds_what_was_applied(live, applied_hash)
    except Exception:  # anybody's content: one object must not stop a watch's whole scope
        as_applied = False  # settles nothing: the planner reads the object and says what it is
    return LiveStamp(
        resource_version=str(metadata.get("resourceVersion", "")),
        source=source or "",
        commit=commit or "",
        applied_hash=applied_hash or "",
        as_applied=as_applied,
    )


def _holds_what_was_applied(live: Mapping[str, Any], applied_hash: str) -> bool:
    current = live_content(live)
    metadata = live.get("metadata") or {}
    if (metadata.get("labels") or {}).get(KIND_LABEL) != FLAG_SET_KIND:
        return current.hash == applied_hash
    # A published flag set carries its origin inside the document: it must be the one Sluice wrote.
    document = _flag_document(str(metadata.get("name", "")), current)
    if document is None:
        return False
    stamps = document.get("metadata")
    source, commit, _ = live_provenance(live)
    if not isinstance(stamps, dict) or (
        stamps.get(COMMIT_METADATA_KEY),
        stamps.get(SOURCE_METADATA_KEY),
    ) != (commit, source):
        return False
    return applied_hash in applied_hashes_of(str(metadata.get("name", "")), flag_set=True, current=current)


def _flag_document(name: str, current: Content) -> dict[str, Any] | None:
    return live_document(current.data.get(flag_set_key(name)))


def applied_hash_of(name: str, *, flag_set: bool, current: Content) -> str:
    """The content hash Sluice would have recorded for ``current``: flag sets without their origin stamps."""
    return applied_hashes_of(name, flag_set=flag_set, current=current)[0]


def applied_hashes_of(name: str, *, flag_set: bool, current: Content) -> tuple[str, ...]:
    """``applied_hash_of``, then, for a flag set whose evaluators refer to one another, the hash of its
    text as releases before 2026-12-04 wrote it (every key sorted, ``$evaluators`` included): what they
    recorded is not taken for an edit in the cluster."""
    document = _flag_document(name, current) if flag_set else None
    if document is None:
        return (current.hash,)
    metadata = document.get("metadata")
    kept = {k: v for k, v in metadata.items() if k not in ORIGIN_STAMPS} if isinstance(metadata, dict) else {}
    if kept:
        document["metadata"] = kept
    else:
        document.pop("metadata", None)
    key = flag_set_key(name)
    published = flag_set_json(document)
    hashes: tuple[str, ...] = (replace(current, data={**current.data, key: published}).hash,)
    legacy = flag_set_json_sorted(document)
    if legacy != published:
        hashes += (replace(current, data={**current.data, key: legacy}).hash,)
    return hashes


def settles(stamp: LiveStamp, obj: DesiredObject, *, source: str) -> bool:
    """Whether ``stamp`` proves that planning ``obj`` would find it unchanged, without reading it.

    The caller also checks that the object is in the source's inventory: labels
    alone never make an object the source's.
    """
    return (
        stamp.as_applied
        and stamp.source == source
        and obj.flag_set is None
        and obj.canary_document is None
        and stamp.applied_hash == obj.content.hash
    )


def sources_to_wake(old: LiveStamp | None, new: LiveStamp | None) -> set[str]:
    """The sources to reconcile now that an object went from ``old`` to ``new`` (None: absent).

    Sluice's own writes leave an object as applied, so they wake nobody. An
    edit that breaks ``as_applied``, a deletion, or labels that move the object
    to another source or out of Sluice wake each source it belonged to.
    """
    if old == new:
        return set()
    owners: set[str] = set()
    if new is None:
        owners.add(old.source if old is not None else "")
    elif not new.as_applied:
        owners.add(new.source)
    if old is not None and new is not None and old.source != new.source:
        owners |= {old.source, new.source}
    return owners - {""}


def settle_namespace(
    texts: Mapping[str, str],
    wanted: Sequence[DesiredObject],
    *,
    source: str,
    managed: Collection[ObjectKey],
    managed_here: Collection[str] = (),
) -> tuple[dict[ObjectKey, LiveStamp], list[str]]:
    """Of one fresh (cluster, namespace), from its stamps (name -> encoded stamp): the objects the stamps
    settle, and the names to read. ``managed_here``: the names the inventory holds in it.

    To read: every wanted object not settled (a missing stamp included), every
    object the stamps say is the source's that Git no longer has (prune or orphan),
    and every object of the inventory Git no longer has that has no stamp.
    """
    settled: dict[ObjectKey, LiveStamp] = {}
    unread: list[str] = []
    names = set()
    for obj in wanted:
        names.add(obj.name)
        _settle_wanted(obj, texts.get(obj.name), settled, unread, source=source, managed=managed)
    for name, text in texts.items():
        if name not in names and _unwanted_to_read(text, name, source=source, managed_here=managed_here):
            unread.append(name)
    # A missing stamp does not say the object is gone: a worker's write drops it until the watch brings
    # the write's event (``unsettle_written``), and a new object has none until its ADDED event is
    # stored. Taken as absent, an object created moments before a revert was never pruned.
    unread.extend(name for name in managed_here if name not in names and name not in texts)
    return settled, unread


def _settle_wanted(
    obj: DesiredObject,
    text: str | None,
    settled: dict[ObjectKey, LiveStamp],
    unread: list[str],
    *,
    source: str,
    managed: Collection[ObjectKey],
) -> None:
    stamp = LiveStamp.decode(text) if text is not None else None
    if stamp is not None and obj.key in managed and settles(stamp, obj, source=source):
        settled[obj.key] = stamp
    else:
        unread.append(obj.name)


def _unwanted_to_read(text: str, name: str, *, source: str, managed_here: Collection[str]) -> bool:
    """A live object Git does not want here is read when it may be this source's (prune or orphan), or
    when the inventory holds it under another owner's label (taken over: read once, and released)."""
    stamp = LiveStamp.decode(text)
    return stamp is None or stamp.source == source or name in managed_here


# Beyond this share of a namespace's objects changed, settling it again whole is as cheap.
RESETTLE_SHARE = 4


def settle_namespace_again(
    known: _Settled,
    texts: Mapping[str, str],
    wanted: Sequence[DesiredObject],
    *,
    source: str,
    managed: Collection[ObjectKey],
    managed_here: Collection[str] = (),
) -> tuple[dict[ObjectKey, LiveStamp], list[str]]:
    """``settle_namespace`` for a namespace settled last pass under the same source and inventory, where
    only a few names changed: their stamps (one object written since), or their wanted object (a
    one-file commit). Only those names are settled again; the others keep last pass's answer, which
    depended on nothing but their own stamp and object. Many changes: settled whole."""
    changed = {name for name, _ in known.texts.items() ^ texts.items()}
    if wanted is not known.wanted:
        before = {obj.name: obj for obj in known.wanted}
        now = {obj.name: obj for obj in wanted}
        changed.update(name for name, obj in now.items() if before.get(name) is not obj)
        changed.update(before.keys() - now.keys())
    else:
        now = None
    if len(changed) * RESETTLE_SHARE > max(len(wanted), len(texts)):
        return settle_namespace(texts, wanted, source=source, managed=managed, managed_here=managed_here)
    wanted_by_name = now if now is not None else {obj.name: obj for obj in wanted if obj.name in changed}
    settled = {key: stamp for key, stamp in known.settled.items() if key[2] not in changed}
    unread = [name for name in known.unread if name not in changed]
    for name in sorted(changed):
        obj = wanted_by_name.get(name)
        if obj is not None:
            _settle_wanted(obj, texts.get(name), settled, unread, source=source, managed=managed)
        elif name in texts:
            if _unwanted_to_read(texts[name], name, source=source, managed_here=managed_here):
                unread.append(name)
        elif name in managed_here:  # no stamp, as in ``settle_namespace``
            unread.append(name)
    return settled, unread


class _InventoryNames(Collection[str]):
    """The inventory's names in one namespace: a name is looked up in the whole inventory; only a walk
    of them all (settling the namespace whole) groups the inventory, once per inventory."""

    def __init__(self, memo: SettleMemo, managed: frozenset[ObjectKey], cluster: str, namespace: str) -> None:
        self._memo, self._managed, self._cluster, self._namespace = memo, managed, cluster, namespace

    def __contains__(self, name: object) -> bool:
        return (self._cluster, self._namespace, name) in self._managed

    def __iter__(self) -> Iterator[str]:
        return iter(self._memo.managed_names(self._managed, self._cluster, self._namespace))

    def __len__(self) -> int:
        return len(self._memo.managed_names(self._managed, self._cluster, self._namespace))


class _Settled(NamedTuple):
    """One namespace's settling, with what it was computed from (and the version the live cache
    stored those stamps at, "" if none)."""

    texts: Mapping[str, str]
    wanted: Sequence[DesiredObject]
    settled: dict[ObjectKey, LiveStamp]
    unread: list[str]
    version: str = ""


class _Snapshot(NamedTuple):
    source: str
    managed: frozenset[ObjectKey]
    namespaces: dict[tuple[str, str], _Settled]


class SettleMemo:
    """How one source's last pass settled each (cluster, namespace), kept for the next pass.

    ``settle_namespace`` depends only on the stamps, the wanted objects, the source and its
    inventory: when a namespace's stamps are the same text, its wanted objects the very same
    objects (an unchanged file gives them again, see ``ParseCache.expanded``) and the inventory's
    keys in that namespace equal, the answer is the last one. Comparing is done in C; decoding and
    settling was Python per object. A pass reads the last pass's snapshot and, when it is done,
    replaces it whole with its own: passes that overlap never mix their inventories, and only the
    namespaces the last pass settled are kept (the stamps of each, other sources' included: one
    namespace's worth each).
    """

    def __init__(self) -> None:
        self._last = _Snapshot("", frozenset(), {})
        self.stamps_held = 0
        self._grouped: tuple[frozenset[ObjectKey], dict[tuple[str, str], frozenset[str]]] | None = None

    def managed_names(self, managed: frozenset[ObjectKey], cluster: str, namespace: str) -> frozenset[str]:
        """The inventory's names in one namespace. Grouped once per inventory: ``managed_keys`` hands
        over the same set while the inventory's version holds, and a namespace settled from last pass's
        answer does not ask."""
        if self._grouped is None or self._grouped[0] is not managed:
            grouped: dict[tuple[str, str], set[str]] = {}
            for at, ns, name in managed:
                grouped.setdefault((at, ns), set()).add(name)
            self._grouped = (managed, {target: frozenset(names) for target, names in grouped.items()})
        return self._grouped[1].get((cluster, namespace), frozenset())

    def begin(self, source: str, managed: frozenset[ObjectKey]) -> SettlePass:
        last = self._last
        if last.source != source:
            usable = {}
        elif last.managed is managed or last.managed == managed:
            usable = last.namespaces
        else:
            # A namespace's answer depends on the inventory only through that namespace's keys: an
            # object created or pruned elsewhere leaves it standing.
            touched = {(cluster, namespace) for cluster, namespace, _ in last.managed ^ managed}
            usable = {target: known for target, known in last.namespaces.items() if target not in touched}
        return SettlePass(self, _Snapshot(source, managed, {}), usable)

    def _keep(self, snapshot: _Snapshot) -> None:
        self._last = snapshot
        # Each namespace's stamps are this source's own copy (other sources' objects included): what
        # the worker's cache bound counts besides the desired objects.
        self.stamps_held = sum(len(known.texts) for known in snapshot.namespaces.values())


class SettlePass:
    """One pass's settling: answers from the last pass where its inputs are the same, then kept."""

    def __init__(self, memo: SettleMemo, snapshot: _Snapshot, last: dict[tuple[str, str], _Settled]) -> None:
        self._memo, self._snapshot, self._last = memo, snapshot, last

    def kept_versions(self, cluster: str) -> dict[str, str]:
        """namespace -> the version of the stamps the last pass settled it from, where one is kept: the
        live cache then sends a namespace's stamps only if they were written since."""
        return {
            ns: known.version for (at, ns), known in self._last.items() if at == cluster and known.version
        }

    def settle(
        self,
        cluster: str,
        namespace: str,
        texts: Mapping[str, str] | None,
        wanted: Sequence[DesiredObject],
        *,
        version: str = "",
    ) -> tuple[dict[ObjectKey, LiveStamp], list[str]]:
        """Settles one fresh namespace from its stamps ``texts``, stored at ``version``; None: they are
        still the stamps of that version, which the last pass kept (``kept_versions``)."""
        known = self._last.get((cluster, namespace))
        if texts is None:
            if known is None or not version or known.version != version:
                raise ValueError(f"no stamps of {cluster}/{namespace} are kept at version {version!r}")
            texts = known.texts
        source, managed = self._snapshot.source, self._snapshot.managed
        if known is None:
            here = self._memo.managed_names(managed, cluster, namespace)
            settled = settle_namespace(texts, wanted, source=source, managed=managed, managed_here=here)
            known = _Settled(texts, wanted, *settled, version)
        elif (
            # The same revision hands over the very same tuple (DesiredState.by_target): no walk then.
            known.wanted is not wanted
            and (len(known.wanted) != len(wanted) or not all(map(operator.is_, known.wanted, wanted)))
        ) or known.texts != texts:
            # Only a few names are looked up here, each in the inventory itself: no grouping of it.
            names_here = _InventoryNames(self._memo, managed, cluster, namespace)
            again = settle_namespace_again(
                known, texts, wanted, source=source, managed=managed, managed_here=names_here
            )
            known = _Settled(texts, wanted, *again, version)
        elif known.version != version:  # the same stamps, stored again
            known = known._replace(version=version)
        self._snapshot.namespaces[(cluster, namespace)] = known
        return dict(known.settled), list(known.unread)

    def finish(self) -> None:
        """The pass is done: its answers are what the next pass compares with."""
        self._memo._keep(self._snapshot)
