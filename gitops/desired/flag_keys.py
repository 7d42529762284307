"""Flag keys across sources: where a revision publishes each key, and the errors for those another source
publishes there. Pure; the shell asks the database which keys other sources publish
(``gitops.selectors.flag_keys_published_by_others``) and rejects the revision with these errors.

flagd serves every flag set of a flags namespace together, merged by key, and of two definitions of one
key it serves whichever it read last. Within a source a key belongs in one file (``revision`` refuses it
in two); across sources it belongs to one source: a revision that would publish a key another source
publishes into the same cluster's flags namespace is rejected as a whole, at every pass while that
source publishes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from gitops.desired.errors import ValidationError
from gitops.desired.revision import DesiredState

Place = tuple[str, str]  # (cluster, namespace)

# Where another source publishes a key, named in its error: the rest are counted, not listed.
MAX_PLACES_SHOWN = 3


def flag_key_hash(key: str) -> str:
    """A flag key as the flag catalog stores it (``PublishedFlag.key_hash``): keys are any one-line text
    a repository chooses, so they are matched by hash and never indexed whole."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class FlagKeyDefinition:
    """Where a revision defines a flag key (its flag-set file and the key's line there), and the
    (cluster, namespace) pairs it publishes the key into."""

    file: str
    line: int | None
    places: frozenset[Place]


@dataclass(frozen=True)
class PublishedElsewhere:
    """A flag key another source publishes into a cluster's namespace, as its flag catalog and its
    inventory say, or as its rollout under way claimed it (``rollout``: its id) before writing.
    ``removed``: Git no longer has it, and the old side of that source's rollout is served it until the
    rollout completes."""

    source: str
    cluster: str
    namespace: str
    key: str
    removed: bool = False
    rollout: int | None = None


def flag_key_definitions(desired: DesiredState) -> dict[str, FlagKeyDefinition]:
    """Each flag key of the revision's flag sets. A valid revision defines a key in one file, published
    into the flags namespace of every target cluster: one object per cluster, one flag set for all."""
    by_file: dict[str, tuple[Mapping[str, int], Iterable[str], set[Place]]] = {}
    # Flag sets go to the flags namespace alone: its objects are looked at (grouped once per revision),
    # not every ConfigMap of the revision.
    for (cluster, namespace), objects in desired.by_target.items():
        if namespace != desired.policy.flags_namespace:
            continue
        for obj in objects:
            if obj.flag_set is not None:
                # The object's origin, not the flag set's own file: a renamed file's blob is parsed once.
                found = by_file.setdefault(obj.origin, (obj.flag_set.key_lines, obj.flag_set.flags, set()))
                found[2].add((cluster, namespace))
    definitions: dict[str, FlagKeyDefinition] = {}
    for file, (lines, keys, places) in by_file.items():
        frozen = frozenset(places)
        for key in keys:
            definitions.setdefault(key, FlagKeyDefinition(file, lines.get(key), frozen))
    return definitions


@dataclass(frozen=True)
class FlagKeys:
    """A revision's flag keys as the database is asked about them: each key's definition, every
    (cluster, namespace) they go to, and their hashes."""

    definitions: Mapping[str, FlagKeyDefinition]
    places: frozenset[Place]
    hashes: frozenset[str]


def flag_keys(desired: DesiredState) -> FlagKeys:
    """``flag_key_definitions`` with their places and hashes. Worked out for a revision not yet accepted
    only (``revisions.flag_keys_elsewhere``): once per commit, and at each pass while it is rejected."""
    definitions = flag_key_definitions(desired)
    places: set[Place] = set()
    for each_file in {definition.places for definition in definitions.values()}:  # shared by a file's keys
        places |= each_file
    return FlagKeys(definitions, frozenset(places), frozenset(flag_key_hash(key) for key in definitions))


# A rollout's claim on its flag keys (``Rollout.flag_claims``): for each group of keys that go to the same
# places, {"places": [[cluster, namespace], ...], "keys": [[key_hash, key], ...]}.
FlagClaims = list[dict[str, list[list[str]]]]


def flag_claims(keys: FlagKeys) -> FlagClaims:
    """What a rollout of the revision claims as it starts: every key, where it goes. Keys of one file share
    their places, so a group is stored once per file's places, not once per key and place."""
    grouped: dict[frozenset[Place], list[list[str]]] = {}
    for key, definition in sorted(keys.definitions.items()):
        grouped.setdefault(definition.places, []).append([flag_key_hash(key), key])
    return [
        {"places": [list(place) for place in sorted(places)], "keys": group}
        for places, group in grouped.items()
    ]


def claimed_elsewhere(
    claims: Iterable[tuple[str, int, FlagClaims]], places: Collection[Place], key_hashes: Collection[str]
) -> list[PublishedElsewhere]:
    """The keys of ``key_hashes`` that other sources' rollouts under way claim in one of ``places``:
    ``claims`` holds (source name, rollout id, its claims) for each."""
    found = []
    for source, rollout, groups in claims:
        for group in groups:
            where = [
                (cluster, namespace)
                for cluster, namespace in group["places"]
                if (cluster, namespace) in places
            ]
            taken = [key for key_hash, key in group["keys"] if key_hash in key_hashes] if where else []
            found += [
                PublishedElsewhere(source, *place, key, rollout=rollout) for place in where for key in taken
            ]
    return found


def claim_places(claims: FlagClaims) -> tuple[set[Place], set[str]]:
    """Every place and every key hash a claim names: what to ask other sources about."""
    places = {(cluster, namespace) for group in claims for cluster, namespace in group["places"]}
    return places, {key_hash for group in claims for key_hash, _ in group["keys"]}


def claims_taken(claims: FlagClaims, taken: Iterable[PublishedElsewhere]) -> list[PublishedElsewhere]:
    """Of ``taken``, those that hold one of the claimed keys where the claim put it (another source may
    publish a key elsewhere)."""
    claimed = {
        (key, (cluster, namespace))
        for group in claims
        for cluster, namespace in group["places"]
        for _, key in group["keys"]
    }
    return [other for other in taken if (other.key, (other.cluster, other.namespace)) in claimed]


def taken_by(source: str, where: str, rollout: int | None, *, also: bool = False) -> str:
    """How a key another source has is said: claimed by its rollout under way, or published."""
    if rollout is not None:
        return f"being published into {where} by rollout {rollout} of source {source!r}"
    return f"{'also ' if also else ''}published into {where} by source {source!r}"


def published_elsewhere_errors(
    definitions: Mapping[str, FlagKeyDefinition], published: Iterable[PublishedElsewhere]
) -> list[ValidationError]:
    """One error per key of the revision another source publishes where the revision would publish it,
    at the key's line: the source first by name, and where. ``published`` holds other sources' keys
    only (a source's own keys never conflict with it); those in other places are left out here."""
    found: dict[str, dict[str, list[PublishedElsewhere]]] = {}
    for other in published:
        definition = definitions.get(other.key)
        if definition is not None and (other.cluster, other.namespace) in definition.places:
            found.setdefault(other.key, {}).setdefault(other.source, []).append(other)
    errors = []
    for key in sorted(found):
        definition = definitions[key]
        message = _published_elsewhere(key, found[key])
        errors.append(ValidationError(definition.file, definition.line, f"flags.{key}", message))
    return errors


def _published_elsewhere(key: str, by_source: Mapping[str, list[PublishedElsewhere]]) -> str:
    source = min(by_source)
    places = sorted({f"{other.cluster}/{other.namespace}" for other in by_source[source]})
    where = ", ".join(places[:MAX_PLACES_SHOWN])
    if len(places) > MAX_PLACES_SHOWN:
        where += f" and {len(places) - MAX_PLACES_SHOWN:,} more"
    others = len(by_source) - 1
    also = f" (and by {others:,} other source{'s' if others > 1 else ''})" if others else ""
    # Taken out of its Git, the key is still served to the old side of its rollout until that completes.
    leaving = all(other.removed for other in by_source[source])
    until = (
        f"; {source!r} is taking it out: it counts until that rollout completes"
        if leaving
        else "; take it out of one of them, or publish into another flags namespace"
    )
    # Claimed by a rollout under way that has not written it yet: it counts from the rollout's start.
    claimed = [other.rollout for other in by_source[source] if other.rollout is not None]
    only_claimed = bool(claimed) and len(claimed) == len(by_source[source])
    verb = taken_by(source, where, min(claimed) if only_claimed else None, also=True)
    return (
        f"the flag {key!r} is {verb}{also}: flagd serves every "
        "flag set of a namespace together, merged by key, and of two definitions the one it read last, "
        f"so one key belongs to one source{until}"
    )
