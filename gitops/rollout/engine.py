"""Which targets a step covers. Pure: values in, values out.

ConfigMaps: an object's targets are its (cluster, namespace) pairs in policy
order. After ``setWeight: w`` an object with N targets has its new content in
the first ceil(w% x N) of them, so the first targets listed are the canaries
and waves go cluster by cluster when the policy lists clusters one after the
other; a single-target object changes at the first weight above 0.

Flag sets: the set is published canary-wrapped at w in every target cluster, so
flagd itself serves the new definitions to a sticky w% of users, the same users
in each cluster (see ``flag_canary``).

Deletes (prune) wait for 100%.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from gitops.desired.configmaps import CONFIGMAP_SIZE_LIMIT
from gitops.desired.policy import Pause, SetWeight, Step
from gitops.desired.revision import (
    SLUICE_METADATA_KEYS,
    STAMPS_ROOM,
    DesiredObject,
    DesiredState,
    ObjectKey,
    flag_set_json,
    flag_set_key,
)
from gitops.rollout.flag_canary import CanaryTooLarge, canary_flag_set, changed_flags, moved_flags

CANARY_WEIGHT_KEY = SLUICE_METADATA_KEYS[2]


def target_cutoff(weight: int, targets: int) -> int:
    """How many of an object's targets hold the new content at ``weight``."""
    return math.ceil(weight * targets / 100)


# The most an administrator's approval floor lets go out before anyone approved: a canary, not a release.
UNAPPROVED_CANARY_MAX_WEIGHT = 25


def _any_target(weight: int) -> int:
    """The share to assume when the revision is not at hand: a ConfigMap with one target changes whole."""
    return 100 if weight > 0 else 0


def with_approval_gate(
    steps: tuple[Step, ...], share: Callable[[int], int] = _any_target
) -> tuple[Step, ...]:
    """The steps with an approval gate an administrator requires: nothing goes past a canary unapproved.

    ``share(weight)`` is the largest percentage of any one object's targets that holds new content at
    ``weight`` (``largest_share``). The gate is an indefinite pause right after the first step that
    changes anything, when that step writes at most 25% of every object's targets; before that step
    otherwise. The repository chooses the weights and the targets: a first step of 99% covers every
    target of most objects, and so does a first step of 1% for a ConfigMap with a single target.
    An indefinite pause already at or before that place counts.
    """
    changing = [(i, s.weight) for i, s in enumerate(steps) if isinstance(s, SetWeight) and s.weight]
    if not changing:
        return (Pause(None), *steps)
    first, weight = changing[0]
    gate = first if share(weight) > UNAPPROVED_CANARY_MAX_WEIGHT else first + 1
    if Pause(None) in steps[: gate + 1]:
        return steps
    return (*steps[:gate], Pause(None), *steps[gate:])


def largest_share(desired: DesiredState, weight: int) -> int:
    """The largest percentage of any one object's targets that holds new content at ``weight``.

    A flag set's canary serves ``weight`` percent of its users in every cluster. A ConfigMap with N
    targets has ceil(weight x N / 100) of them changed: all of a single target at any weight above 0.
    """
    if weight <= 0:
        return 0
    if weight >= 100:
        return 100  # everything, and the prunes: a revision with no objects left deletes them all here
    targets: dict[str, int] = defaultdict(int)
    largest = 0
    for obj in desired.objects:
        if obj.kind == "configmap":
            targets[obj.group] += 1
        else:
            largest = weight
    for count in targets.values():
        largest = max(largest, math.ceil(100 * target_cutoff(weight, count) / count))
    return min(largest, 100)


def held_keys(desired: DesiredState, weight: int) -> frozenset[ObjectKey]:
    """ConfigMap targets that keep their content before the rollout at ``weight``."""
    if weight >= 100:
        return frozenset()
    groups: dict[str, list[DesiredObject]] = defaultdict(list)
    for obj in desired.objects:
        if obj.kind == "configmap":
            groups[obj.group].append(obj)
    held: set[ObjectKey] = set()
    for members in groups.values():
        cutoff = target_cutoff(weight, len(members))
        held.update(obj.key for obj in members if obj.rank >= cutoff)
    return frozenset(held)


def desired_at_weight(
    desired: DesiredState,
    weight: int,
    baselines: Mapping[ObjectKey, dict[str, Any] | None],
    population: str = "",
) -> DesiredState:
    """Git's state with each flag set replaced by its canary at ``weight``.

    ``baselines`` holds each flag set's document as published before the
    rollout (None when it did not exist). At 100 the flag sets are Git's own.
    ``population`` is the rollout's seed: the users every flag set's canary
    sends to the new side (``canary_flag_set``).
    """
    if weight >= 100:
        return desired
    moved = _moved_between_flag_sets(desired, baselines)
    objects = []
    for obj in desired.objects:
        if obj.flag_set is None:
            objects.append(obj)
            continue
        if not moved.get(obj.key) and not changed_flags(baselines.get(obj.key), obj.flag_set.document):
            # Nothing of it to split: published as Git has it, which the cluster holds already. Its
            # canary differed by the weight it stamps alone, so every step rewrote every flag set of
            # the source, and restarted whatever reads one (flagd itself), for a ConfigMap's commit.
            objects.append(obj)
            continue
        try:
            canary = canary_flag_set(
                baselines.get(obj.key),
                obj.flag_set.document,
                weight,
                metadata={CANARY_WEIGHT_KEY: weight},
                population=population,
                moved=moved.get(obj.key, frozenset()),
            )
        except CanaryTooLarge as exc:
            raise CanaryTooLarge(f"{obj.origin}: {exc}") from None
        data = {flag_set_key(obj.name): flag_set_json(canary)}
        if canary.get("flags") != obj.flag_set.document.get("flags"):  # else as validated: it fits
            _check_canary_fits(obj, data, weight)
        content = replace(obj.content, data=data)
        objects.append(replace(obj, canary_document=canary, content=content))
    return DesiredState(policy=desired.policy, objects=tuple(objects))


def _moved_between_flag_sets(
    desired: DesiredState, baselines: Mapping[ObjectKey, dict[str, Any] | None]
) -> dict[ObjectKey, frozenset[str]]:
    """The flags each flag set loses to, or gains from, another one flagd serves beside it (the sets of
    one namespace of one cluster): those switch at 100 only (``moved_flags``). A set Git dropped (its
    baseline without a desired object) counts as losing every flag: flagd serves it until the prune.
    Where one of those cannot be read, every flag a kept set gains there may be one of its own."""
    places: dict[tuple[str, str], dict[ObjectKey, tuple[dict[str, Any] | None, Mapping[str, Any]]]] = {}
    for obj in desired.objects:
        if obj.flag_set is not None:
            side = (baselines.get(obj.key), obj.flag_set.document)
            places.setdefault((obj.cluster, obj.namespace), {})[obj.key] = side
    unreadable: set[tuple[str, str]] = set()
    for key, baseline in baselines.items():
        place = (key[0], key[1])
        if key in places.get(place, {}):
            continue
        if baseline is None:
            unreadable.add(place)
        else:
            places.setdefault(place, {})[key] = (baseline, {"flags": {}})
    moved: dict[ObjectKey, frozenset[str]] = {}
    for place, sides in places.items():
        if len(sides) > 1:
            moved.update(moved_flags(sides))
        if place in unreadable:
            for key, (old, new) in sides.items():
                if gained := set(new.get("flags") or {}) - set((old or {}).get("flags") or {}):
                    moved[key] = moved.get(key, frozenset()) | gained
    return moved


def _check_canary_fits(obj: DesiredObject, data: Mapping[str, str], weight: int) -> None:
    """A split flag carries both its sides: a canary can be several times its flag set's size. One past
    what a ConfigMap holds is refused here, naming the file, not by the apiserver at the step's apply."""
    size = sum(len(key.encode()) + len(text.encode()) for key, text in data.items()) + STAMPS_ROOM
    if size > CONFIGMAP_SIZE_LIMIT:
        raise CanaryTooLarge(
            f"{obj.origin}: its canary at {weight}% would be {size:,} bytes with Sluice's stamps, past the "
            f"{CONFIGMAP_SIZE_LIMIT:,} a ConfigMap holds (a split flag carries both its definitions); roll "
            "it out with a single setWeight 100 step, or split the flag set into smaller ones"
        )


def desired_hash(desired: DesiredState) -> str:
    """One hash over the whole revision's content: what an approval approves (``content_hash``)."""
    return desired.content_hash
