"""The flag catalog: every flag a source publishes, as the Flags page shows it.

After each step the worker records, per flag of the revision it rolls out, the
definition (summarised by ``gitops.desired.flag_summary``), the rollout that brings
it, and the commit and time of the change-log entry that first published it. Pages
then read one small table: never the cluster, never the change log.

- A flag the rollout changes (its effective definition differs from the one the flag
  set had before the rollout touched it) points at the rollout; its share of users is
  the rollout's weight while it runs. ``changed_commit``/``changed_at`` come from the
  rollout's first change-log entry of the flag set, so they stay empty until the new
  definition is first published (a step at weight 0 publishes nothing).
- A flag the rollout does not change keeps its row. One Sluice has not recorded as
  Git has it (a catalog started after the flag was published) takes the latest
  change-log entry of its flag set, with no rollout: all users have it.
- A flag Git no longer has is marked ``removed`` while the rollout runs below 100% and
  leaves the catalog at 100%. Removed from a flag set Git still has, it goes with the
  canary split (``changed_at``: when the split was first published); in a flag set Git
  no longer has, everyone keeps it until 100% (``changed_at`` stays empty).

A pass that would change nothing writes nothing, and finding that out costs one query.

A rollback (``flag_catalog_rolled_back``) puts back what the clusters serve again: each flag set it
restores as the rollout found it, with no rollout and all users. Its flags keep their row where it still
holds that definition (a flag the rollout did not change, or held until 100), and otherwise take the
latest change-log entry of the flag set before the rollout, the one that published what is restored;
flags the rollout added leave, and flags it removed come back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction

from gitops.desired.flag_summary import FlagSummary, effective_flags, flag_summary
from gitops.desired.limits import Limits
from gitops.desired.revision import DesiredState, flag_set_key, published_baseline
from gitops.models import Change, PublishedFlag, Rollout
from gitops.prepared import PreparedSelect
from gitops.rollout.flag_canary import canary_reach, changed_flags, held_until_full
from gitops.vocabulary import ChangeAction, FlagReach

CONFIGMAP = "ConfigMap"
FULL_WEIGHT = 100
SetKey = tuple[str, str]  # (namespace, flag-set ConfigMap)
FlagKey = tuple[str, str, str]  # (namespace, flag set, flag key)


@dataclass(frozen=True)
class _Published:
    """A change-log entry that published a flag set: where, which commit, when, by which rollout."""

    cluster: str
    commit: str
    at: Any
    rollout_id: int | None


@dataclass(frozen=True)
class _SetPass:
    """One flag set of the revision, as this pass of the rollout sees it."""

    key: SetKey
    document: Mapping[str, Any]
    changing: set[str]  # flags whose definition this rollout changes
    first: _Published | None  # the rollout's first publication of the set
    touched: bool  # whether the rollout wrote the set at all
    # Changed flags everyone keeps as they were until 100 (``held_until_full``), with that definition.
    held: Mapping[str, FlagSummary] = field(default_factory=dict)
    # At 100: the changed flags this rollout held back until now, which change at its publication at 100.
    flips: Collection[str] = frozenset()


def flag_catalog_record(
    rollout: Rollout,
    desired: DesiredState,
    weight: int,
    baselines: Mapping[tuple[str, str, str], Mapping[str, Any] | None] | None = None,
    weighted: DesiredState | None = None,
    *,
    conflicting: Collection[tuple[str, str, str]] = frozenset(),
) -> None:
    """Brings the source's catalog to what ``rollout`` publishes at ``weight``; writes only on a change.
    ``baselines``: each flag set (by object key) as published before the rollout, below 100;
    ``weighted``: ``desired`` with each flag set's canary at ``weight`` (who has which change);
    ``conflicting``: the objects someone else's ConfigMap holds, which the source does not publish."""
    # One catalog row per flag, whatever the number of clusters: every target cluster publishes the same
    # set (the row names the cluster of its first publication). A set that is someone else's ConfigMap
    # in every cluster is not the source's to list: flagd serves the other one's flags there.
    flag_sets = {
        obj.key[1:]: obj.flag_set
        for obj in desired.objects
        if obj.flag_set is not None and obj.key not in conflicting
    }
    sets = {key: flag_set.document for key, flag_set in flag_sets.items()}
    held = _held(sets, baselines or {}) if weight < FULL_WEIGHT else {}
    wanted = {
        (namespace, name, key): held[(namespace, name)][key].definition_hash
        if key in held.get((namespace, name), {})
        else hashed
        for (namespace, name), flag_set in flag_sets.items()
        for key, hashed in flag_set.definition_hashes.items()
    }
    held_flags = {(*set_key, key) for set_key, keys in held.items() for key in keys}
    reach = _reach(desired, baselines or {}, weighted) if 0 < weight < FULL_WEIGHT else {}
    if _up_to_date(rollout, wanted, weight, held_flags, reach):
        return
    with transaction.atomic():
        _rewrite(rollout, sets, weight, held, reach)


def _reach(
    desired: DesiredState,
    baselines: Mapping[tuple[str, str, str], Mapping[str, Any] | None],
    weighted: DesiredState | None,
) -> dict[FlagKey, FlagReach]:
    """Who has each changed flag's new definition, or its removal, in the canary published now; where the
    clusters differ (they published different sets before: one has the new definition already, say), the
    rollout's share. A flag set Git dropped is served as it was until its prune at 100: nobody loses its
    flags before."""
    canaries = {obj.key: obj.canary_document for obj in (weighted.objects if weighted else ())}
    by_cluster: dict[SetKey, list[dict[str, FlagReach]]] = {}
    for obj in desired.objects:
        if obj.flag_set is not None and obj.key in canaries:
            # A set with no flag to split is published as Git has it (``desired_at_weight``).
            canary = canaries[obj.key] or obj.flag_set.document
            here = canary_reach(baselines.get(obj.key), obj.flag_set.document, canary)
            by_cluster.setdefault((obj.namespace, obj.name), []).append(here)
    found: dict[FlagKey, FlagReach] = {}
    for set_key, clusters in by_cluster.items():
        for key in {key for here in clusters for key in here}:
            # A cluster where the flag did not change gives everyone there the new definition already.
            reaches = {here.get(key, FlagReach.AT_ONCE) for here in clusters}
            found[(*set_key, key)] = reaches.pop() if len(reaches) == 1 else FlagReach.SPLIT
    kept = {obj.key for obj in desired.objects}
    for (cluster, namespace, name), document in baselines.items():
        if (cluster, namespace, name) in kept or document is None:
            continue
        for key in document.get("flags") or {}:
            # Where another cluster still has the set and changes the flag, the clusters differ. One that
            # keeps it unchanged leaves the default: its row is not this rollout's, so no reach is shown.
            elsewhere = found.get((namespace, name, key), FlagReach.AT_FULL)
            found[(namespace, name, key)] = (
                FlagReach.AT_FULL if elsewhere is FlagReach.AT_FULL else FlagReach.SPLIT
            )
    return found


def _held(
    sets: Mapping[SetKey, Mapping[str, Any]],
    baselines: Mapping[tuple[str, str, str], Mapping[str, Any] | None],
) -> dict[SetKey, dict[str, FlagSummary]]:
    """The changed flags whose users all keep the old definition until 100, and that definition: the
    page must not show the new one to the rollout's share (``held_until_full``)."""
    by_set: dict[SetKey, list[Mapping[str, Any] | None]] = {}
    for (_, namespace, name), document in baselines.items():
        by_set.setdefault((namespace, name), []).append(document)
    held: dict[SetKey, dict[str, FlagSummary]] = {}
    for set_key, document in sets.items():
        new_effective = effective_flags(document)
        kept: dict[str, FlagSummary] | None = None
        # A flag counts as held only where every cluster's canary holds it (clusters published
        # different sets before, or one had none): anywhere else a share of users has the new one.
        for old in by_set.get(set_key) or [None]:
            old_effective = effective_flags(old)
            here = {
                key: flag_summary((old or {}).get("flags", {})[key], old_effective[key])
                for key in changed_flags(old, document) & old_effective.keys() & new_effective.keys()
                if held_until_full(old_effective[key], new_effective[key])
            }
            kept = here if kept is None else {key: kept[key] for key in kept.keys() & here.keys()}
        if kept:
            held[set_key] = kept
    return held


# Every pass of a source asks it (one statement, with flags or without): compiled once.
_CatalogRow = tuple[str, str, str, str, bool, int | None, str | None, Any, int | None, str]
_CATALOG_ROWS: PreparedSelect[_CatalogRow] = PreparedSelect(
    lambda source_id: PublishedFlag.objects.filter(source_id=source_id).values_list(
        "namespace",
        "flag_set",
        "key",
        "definition_hash",
        "removed",
        "rollout_id",
        "rollout__phase",
        "changed_at",
        "held_by_id",
        "reach",
    ),
    int,
)


def _up_to_date(
    rollout: Rollout,
    wanted: Mapping[FlagKey, str],
    weight: int,
    held: Collection[FlagKey],
    reach: Mapping[FlagKey, FlagReach],
) -> bool:
    rows = _CATALOG_ROWS(rollout.source_id)
    wanted_sets = {(namespace, flag_set) for namespace, flag_set, _ in wanted}
    seen: set[FlagKey] = set()
    # One plain query: a row per flag is small, and a server-side cursor (DECLARE ... WITH HOLD, FETCH,
    # CLOSE) cost three round trips on every pass, flags or not.
    for namespace, flag_set, key, hashed, removed, rollout_id, phase, changed_at, held_by, reached in rows:
        flag = (namespace, flag_set, key)
        expected = reach.get(flag, FlagReach.SPLIT)
        if rollout_id == rollout.pk and reached != expected:
            return False
        # A moving flag is published on neither side before 100: nothing to wait for.
        unpublished = changed_at is None and expected is not FlagReach.AT_FULL
        if removed:
            # Served until this rollout reaches 100; a removed flag of a set Git still has goes
            # with the canary split, so it waits for the set's first publication.
            waiting = unpublished and (namespace, flag_set) in wanted_sets
            if rollout_id != rollout.pk or weight >= FULL_WEIGHT or flag in wanted or waiting:
                return False
            continue
        if wanted.get(flag) != hashed:
            return False
        if flag in held and held_by != rollout.pk:
            return False  # held back until 100 by this rollout, which the row must name
        if rollout_id == rollout.pk and unpublished:
            return False  # waiting for its first publication
        if rollout_id not in (None, rollout.pk) and phase != Rollout.Phase.COMPLETED:
            return False  # an aborted or superseded rollout's: this one may have taken over
        seen.add(flag)
    return seen == set(wanted)


def _rewrite(
    rollout: Rollout,
    sets: Mapping[SetKey, dict[str, Any]],
    weight: int,
    held: Mapping[SetKey, Mapping[str, FlagSummary]],
    reach: Mapping[FlagKey, FlagReach],
) -> None:
    # The source's reconcile lock makes this the only writer of its rows.
    existing = {
        (row.namespace, row.flag_set, row.key): row
        for row in PublishedFlag.objects.filter(source_id=rollout.source_id).select_related("rollout")
    }
    by_cluster = _cluster_baselines(rollout, sets.keys())
    baselines = _baselines(by_cluster)
    first = _first_publications(rollout, sets.keys())
    # Which flags the rollout held until 100, from what each cluster had before it: a row may be lost.
    flips = _held(sets, by_cluster) if weight >= FULL_WEIGHT else {}
    rows: list[PublishedFlag] = []
    for set_key, document in sets.items():
        touched = set_key in baselines
        keeps = held.get(set_key, {})
        changing = changed_flags(baselines[set_key], document) - keeps.keys() if touched else set()
        flipping = frozenset(flips.get(set_key, {})) | _moved_in(rollout, set_key, changing, existing, weight)
        one = _SetPass(set_key, document, changing, first.get(set_key), touched, keeps, flipping)
        rows += _rows_of_set(rollout, one, existing)
        if touched and weight < FULL_WEIGHT:
            removed = effective_flags(baselines[set_key]).keys() - effective_flags(document).keys()
            rows += _removed(rollout, set_key, removed, existing, first.get(set_key))
    kept = {(row.namespace, row.flag_set, row.key) for row in rows}
    if weight < FULL_WEIGHT:
        # Flag sets Git no longer has stay published, as they were, until 100%.
        for flag, row in existing.items():
            if flag not in kept and (flag[0], flag[1]) not in sets:
                gone = {"removed": True, "rollout_id": rollout.pk, "changed_commit": "", "changed_at": None}
                rows.append(_copy_row(row, **gone))
                kept.add(flag)
    for row in rows:
        if row.rollout_id == rollout.pk:
            row.reach = reach.get((row.namespace, row.flag_set, row.key), FlagReach.SPLIT)
            if row.reach == FlagReach.AT_FULL:  # nobody has it before 100: not published yet
                row.changed_commit, row.changed_at = "", None
    _store(rollout.source_id, rows)


def _moved_in(
    rollout: Rollout,
    set_key: SetKey,
    changing: Collection[str],
    existing: Mapping[FlagKey, PublishedFlag],
    weight: int,
) -> set[str]:
    """At 100, the changed flags this rollout held back until now (they moved between flag sets): they
    changed at its publication at 100, as the flags it held for their type did. Known by their rows: held
    (``AT_FULL``) below 100, or already flipped (``_flipped`` names the rollout twice), so a pass at 100
    that rewrites the catalog again keeps the time of the publication at 100."""
    if weight < FULL_WEIGHT:
        return set()
    return {
        key
        for key in changing
        if (row := existing.get((*set_key, key))) is not None
        and row.rollout_id == rollout.pk
        and (row.reach == FlagReach.AT_FULL or row.held_by_id == rollout.pk)
    }


def _rows_of_set(
    rollout: Rollout, one: _SetPass, existing: Mapping[FlagKey, PublishedFlag]
) -> list[PublishedFlag]:
    effective = effective_flags(one.document)
    latest: _Published | None = None
    before: _Published | None = None
    rows = []
    for key, flag in (one.document.get("flags") or {}).items():
        summary = one.held.get(key) or flag_summary(flag, effective[key])
        row = existing.get((*one.key, key))
        if key in one.changing and key in one.flips:
            rows.append(_flipped(rollout, one.key, key, summary, row))
        elif key in one.changing:
            published = one.first or _Published(_cluster(row), "", None, rollout.pk)
            rows.append(_row(rollout.source_id, one.key, key, summary, published, rollout_id=rollout.pk))
        elif row is not None and _still_true(row, summary.definition_hash, rollout, touched=one.touched):
            # As it was; a flag this rollout holds until 100 says so (its change time stays its own).
            newly_held = key in one.held and row.held_by_id != rollout.pk
            rows.append(_copy_row(row, held_by_id=rollout.pk) if newly_held else row)
        elif key in one.held:  # everyone has what was published before this rollout, until 100
            before = before or _latest_publication(rollout.source_id, one.key, before_rollout=rollout.pk)
            held = _row(rollout.source_id, one.key, key, summary, before, rollout_id=None)
            held.held_by_id = rollout.pk
            rows.append(held)
        else:
            latest = latest or _latest_publication(rollout.source_id, one.key)
            rows.append(_row(rollout.source_id, one.key, key, summary, latest, rollout_id=None))
    return rows


def _flipped(
    rollout: Rollout, set_key: SetKey, key: str, summary: FlagSummary, row: PublishedFlag | None
) -> PublishedFlag:
    """A flag this rollout held back until 100, at 100: every user has the new definition since the
    rollout's first publication at 100, not its first, which did not change it. Until that publication
    is in the change log (the cluster did not answer), the row waits for it ("not published yet")."""
    done = row is not None and row.definition_hash == summary.definition_hash
    if done and row is not None and row.rollout_id == rollout.pk and row.changed_at is not None:
        return row  # already recorded at its change
    at_full = _full_publication(rollout, set_key)
    published = at_full or _Published(_cluster(row), "", None, rollout.pk)
    flipped = _row(rollout.source_id, set_key, key, summary, published, rollout_id=rollout.pk)
    flipped.held_by_id = rollout.pk
    return flipped


def _still_true(row: PublishedFlag, hashed: str, rollout: Rollout, *, touched: bool) -> bool:
    """Whether the row of a flag this rollout does not change still says what users get."""
    if row.removed or row.definition_hash != hashed:
        return False
    if row.rollout is None or row.rollout_id == rollout.pk:
        return True
    # An aborted or superseded rollout's row stays true until this rollout publishes the flag set.
    return row.rollout.phase == Rollout.Phase.COMPLETED or not touched


def _removed(
    rollout: Rollout,
    set_key: SetKey,
    removed: Iterable[str],
    existing: Mapping[FlagKey, PublishedFlag],
    first: _Published | None,
) -> list[PublishedFlag]:
    rows = []
    for key in removed:
        row = existing.get((*set_key, key))
        if row is not None:
            changed = {"changed_commit": first.commit, "changed_at": first.at} if first else {}
            rows.append(_copy_row(row, removed=True, rollout_id=rollout.pk, **changed))
    return rows


def _copy_row(row: PublishedFlag, **fields: Any) -> PublishedFlag:
    """A new row with ``row``'s values and ``fields`` changed (rows are upserted, never saved one by one)."""
    fields_of_row = {f.attname: getattr(row, f.attname) for f in PublishedFlag._meta.concrete_fields}
    updated = PublishedFlag(**fields_of_row)
    for name, value in fields.items():
        setattr(updated, name, value)
    return updated


def _row(
    source_id: int,
    set_key: SetKey,
    key: str,
    summary: FlagSummary,
    published: _Published | None,
    *,
    rollout_id: int | None,
) -> PublishedFlag:
    return PublishedFlag(
        source_id=source_id,
        cluster=published.cluster if published else settings.SLUICE_CLUSTER_NAME,
        namespace=set_key[0],
        flag_set=set_key[1],
        key=key,
        key_hash=hashlib.sha256(key.encode()).hexdigest()[:32],
        state=summary.state,
        variants=summary.variants,
        variant_count=summary.variant_count,
        default_variant=summary.default_variant,
        targeting=summary.targeting,
        serves_one_variant=summary.serves_one_variant,
        definition_hash=summary.definition_hash,
        removed=False,
        rollout_id=rollout_id,
        changed_commit=published.commit if published else "",
        changed_at=published.at if published else None,
    )


def _store(source_id: int, rows: list[PublishedFlag]) -> None:
    """Replaces the source's catalog with ``rows``: deletes what is gone, upserts the rest."""
    unique = {(row.cluster, row.namespace, row.flag_set, row.key_hash) for row in rows}
    stale = [
        pk
        for pk, *key in PublishedFlag.objects.filter(source_id=source_id).values_list(
            "pk", "cluster", "namespace", "flag_set", "key_hash"
        )
        if tuple(key) not in unique
    ]
    PublishedFlag.objects.filter(pk__in=stale).delete()
    for row in rows:
        row.pk = None
    PublishedFlag.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["source", "cluster", "namespace", "flag_set", "key_hash"],
        update_fields=[
            f.attname
            for f in PublishedFlag._meta.concrete_fields
            if f.attname not in ("id", "source_id", "cluster", "namespace", "flag_set", "key_hash")
        ],
        batch_size=1000,
    )


@dataclass(frozen=True)
class RestoredFlagSet:
    """A flag set a rollback puts back in one cluster: the ConfigMap as its rollout found it there."""

    cluster: str
    namespace: str
    name: str
    before: Mapping[str, Any] | None  # the content put back; None: the rollout created it, and it goes
    # The cluster keeps the rollout's content: it refused the restore, or someone took the set over meanwhile.
    kept: bool = False


@dataclass(frozen=True)
class _RolledBack:
    """The flag sets a rollback restored, as the catalog lists them afterwards."""

    # Each set as the rollout found it, in the first cluster restored that published one; None: no
    # cluster restored had it before the rollout, so its rows go.
    documents: dict[SetKey, dict[str, Any] | None]
    # Sets whose rows stay as they are: every cluster keeps the rollout's content, or the content put back
    # is no flag set Sluice reads, whose flags the catalog cannot tell.
    left: frozenset[SetKey]


def flag_catalog_rolled_back(rollout: Rollout, restored: Iterable[RestoredFlagSet]) -> None:
    """Brings the source's catalog to what the clusters serve once ``rollout`` is rolled back: each flag
    set in ``restored`` as the rollout found it, no rollout, every user; and the flags it marked removed
    in a set it never wrote (one Git dropped, served as it was until a prune at 100) listed again."""
    sets = _rolled_back_sets(restored)
    # The source's reconcile lock makes this the only writer of its rows, as it does for a step.
    existing = {
        (row.namespace, row.flag_set, row.key): row
        for row in PublishedFlag.objects.filter(source_id=rollout.source_id).select_related("rollout")
    }
    _store(rollout.source_id, _rows_after_rollback(rollout, sets, existing, _publications_before(rollout)))


def _rolled_back_sets(restored: Iterable[RestoredFlagSet]) -> _RolledBack:
    """One document per flag set, as ``_baselines`` takes one for a step (the catalog keeps one row per
    flag, whatever the number of clusters); a cluster that had no such set does not hide one that had."""
    by_set: dict[SetKey, list[RestoredFlagSet]] = {}
    for one in restored:
        by_set.setdefault((one.namespace, one.name), []).append(one)
    documents: dict[SetKey, dict[str, Any] | None] = {}
    left: set[SetKey] = set()
    for set_key, clusters in by_set.items():
        put_back = [one for one in clusters if not one.kept]
        readable = (_document(one.before, one.name) for one in put_back if one.before is not None)
        document = next((found for found in readable if found is not None), None)
        if document is not None:
            documents[set_key] = document
        elif put_back and all(one.before is None for one in put_back):
            documents[set_key] = None
        else:
            left.add(set_key)
    return _RolledBack(documents, frozenset(left))


def _rows_after_rollback(
    rollout: Rollout,
    sets: _RolledBack,
    existing: Mapping[FlagKey, PublishedFlag],
    published: Callable[[SetKey], _Published | None],
) -> list[PublishedFlag]:
    """The source's whole catalog once ``rollout`` is rolled back (``_store`` replaces it)."""
    rows: list[PublishedFlag] = []
    for set_key, document in sets.documents.items():
        if document is not None:
            rows += _restored_rows(rollout, set_key, document, existing, published)
    for (namespace, flag_set, _), row in existing.items():
        if (namespace, flag_set) in sets.documents:
            continue  # listed above as restored, or gone with its set
        rows.append(row if (namespace, flag_set) in sets.left else _handed_back(rollout, row, published))
    return rows


def _restored_rows(
    rollout: Rollout,
    set_key: SetKey,
    document: Mapping[str, Any],
    existing: Mapping[FlagKey, PublishedFlag],
    published: Callable[[SetKey], _Published | None],
) -> list[PublishedFlag]:
    effective = effective_flags(document)
    rows = []
    for key, flag in (document.get("flags") or {}).items():
        summary = flag_summary(flag, effective[key])
        row = existing.get((*set_key, key))
        if row is not None and _holds_from_before(row, summary.definition_hash, rollout):
            # As it was, with its own change time: a flag the rollout left alone, or held until 100.
            rows.append(_copy_row(row, held_by_id=None) if row.held_by_id == rollout.pk else row)
        else:
            # The rollout rewrote its row, marked it removed, or dropped it at 100, and the catalog keeps
            # no history: the change-log entry that published what is restored, as for a held flag.
            rows.append(_row(rollout.source_id, set_key, key, summary, published(set_key), rollout_id=None))
    return rows


def _holds_from_before(row: PublishedFlag, hashed: str, rollout: Rollout) -> bool:
    """Whether ``row`` is still the one from before ``rollout``: the definition restored, all users."""
    if row.removed or row.definition_hash != hashed or row.rollout_id == rollout.pk:
        return False
    if row.changed_at is not None and row.changed_at >= rollout.created_at:
        return False  # written again during the rollout (a lost row), from the rollout's own publication
    # A row naming an earlier rollout that ended without completing says its users keep an older one.
    return row.rollout is None or row.rollout.phase == Rollout.Phase.COMPLETED


def _handed_back(
    rollout: Rollout, row: PublishedFlag, published: Callable[[SetKey], _Published | None]
) -> PublishedFlag:
    """A row of a flag set the rollback did not restore. A flag the rollout marked removed there was in a
    set Git dropped, which it never wrote below 100: everyone still has it, as published before."""
    held_by = None if row.held_by_id == rollout.pk else row.held_by_id
    if row.removed and row.rollout_id == rollout.pk:
        was = published((row.namespace, row.flag_set))
        return _copy_row(
            row,
            removed=False,
            rollout_id=None,
            held_by_id=held_by,
            reach=FlagReach.SPLIT,
            changed_commit=was.commit if was else "",
            changed_at=was.at if was else None,
        )
    # A changed flag whose set it never wrote (no cluster answered) keeps naming it: rolled back, 0%.
    return row if held_by == row.held_by_id else _copy_row(row, held_by_id=held_by)


def _publications_before(rollout: Rollout) -> Callable[[SetKey], _Published | None]:
    """Each flag set's latest change-log entry that is not ``rollout``'s (what its rollback restores), read
    once per set and only for the sets a row needs it of."""
    found: dict[SetKey, _Published | None] = {}

    def before(set_key: SetKey) -> _Published | None:
        if set_key not in found:
            found[set_key] = _latest_publication(rollout.source_id, set_key, before_rollout=rollout.pk)
        return found[set_key]

    return before


def _baselines(
    by_cluster: Mapping[tuple[str, str, str], dict[str, Any] | None],
) -> dict[SetKey, dict[str, Any] | None]:
    """Each flag set as published before this rollout first touched it (in any cluster); only the sets
    it touched. ``by_cluster`` is ``_cluster_baselines``, in the order the rollout first touched each."""
    baselines: dict[SetKey, dict[str, Any] | None] = {}
    for (_, namespace, name), document in by_cluster.items():
        baselines.setdefault((namespace, name), document)
    return baselines


def _document(content: Mapping[str, Any] | None, name: str) -> dict[str, Any] | None:
    limits = Limits.from_settings(settings)
    return published_baseline(((content or {}).get("data") or {}).get(flag_set_key(name)), limits)


def _first_publications(rollout: Rollout, set_keys: Iterable[SetKey]) -> dict[SetKey, _Published]:
    """The rollout's first successful change-log entry of each flag set: when its new flags went out."""
    wanted = set(set_keys)
    changes = (
        Change.objects.filter(rollout=rollout, kind=CONFIGMAP, result=Change.Result.OK)
        .filter(name__in={name for _, name in wanted})
        .exclude(action=ChangeAction.ROLLBACK)
        .order_by("id")
        .values_list("namespace", "name", "cluster", "commit", "at")
    )
    first: dict[SetKey, _Published] = {}
    for namespace, name, cluster, commit, at in changes.iterator():
        if (namespace, name) in wanted and (namespace, name) not in first:
            first[(namespace, name)] = _Published(cluster, commit, at, rollout.pk)
    return first


def _cluster_baselines(
    rollout: Rollout, set_keys: Iterable[SetKey]
) -> dict[tuple[str, str, str], dict[str, Any] | None]:
    """Each flag set as each cluster published it before this rollout first touched it there. A self-heal
    is no change of the rollout's: what it replaced is a hand edit, not the set's old side
    (``step.flag_baselines``)."""
    wanted = set(set_keys)
    intents = (
        rollout.intents.filter(kind=CONFIGMAP, name__in={name for _, name in wanted})
        .exclude(action__in=(ChangeAction.ROLLBACK, ChangeAction.SELF_HEAL))
        .order_by("id")
        .values_list("cluster", "namespace", "name", "before")
    )
    baselines: dict[tuple[str, str, str], dict[str, Any] | None] = {}
    for cluster, namespace, name, before in intents.iterator():
        if (namespace, name) in wanted and (cluster, namespace, name) not in baselines:
            baselines[(cluster, namespace, name)] = _document(before, name)
    return baselines


def _full_publication(rollout: Rollout, set_key: SetKey) -> _Published | None:
    """The rollout's first change-log entry that published the flag set at 100."""
    first = (
        Change.objects.filter(
            rollout=rollout,
            namespace=set_key[0],
            name=set_key[1],
            kind=CONFIGMAP,
            result=Change.Result.OK,
            weight__gte=FULL_WEIGHT,
        )
        .exclude(action=ChangeAction.ROLLBACK)
        .order_by("id")
        .values_list("cluster", "commit", "at", "rollout_id")
        .first()
    )
    return _Published(*first) if first else None


def _latest_publication(
    source_id: int, set_key: SetKey, *, before_rollout: int | None = None
) -> _Published | None:
    """The latest change-log entry that published the flag set; ``before_rollout``: the latest one not
    of that rollout (a canary's own publication is not when a flag it holds back changed)."""
    changes = Change.objects.filter(source_id=source_id, namespace=set_key[0], name=set_key[1])
    if before_rollout is not None:
        changes = changes.exclude(rollout_id=before_rollout)
    latest = (
        changes.filter(kind=CONFIGMAP, result=Change.Result.OK)
        .order_by("-id")
        .values_list("cluster", "commit", "at", "rollout_id")
        .first()
    )
    return _Published(*latest) if latest else None


def _cluster(row: PublishedFlag | None) -> str:
    return row.cluster if row is not None else str(settings.SLUICE_CLUSTER_NAME)
