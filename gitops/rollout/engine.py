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
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from gitops.desired.policy import Pause, SetWeight, Step
from gitops.desired.revision import (
    SLUICE_METADATA_KEYS,
    DesiredObject,
    DesiredState,
    ObjectKey,
    flag_set_json,
    flag_set_key,
)
from gitops.rollout.flag_canary import canary_flag_set

CANARY_WEIGHT_KEY = SLUICE_METADATA_KEYS[2]


def target_cutoff(weight: int, targets: int) -> int:
    """How many of an object's targets hold the new content at ``weight``."""
    return math.ceil(weight * targets / 100)


# The most an administrator's approval floor lets go out before anyone approved: a canary, not a release.
UNAPPROVED_CANARY_MAX_WEIGHT = 25


def with_approval_gate(steps: tuple[Step, ...]) -> tuple[Step, ...]:
    """The steps with an approval gate an administrator requires: nothing goes past the first step unapproved.

    The gate is an indefinite pause right after the first step that changes
    anything, when that step is a canary of at most 25%. The repository chooses
    the weights, so a larger first step (say 99%, which covers every target of
    most objects) gets the gate before it instead. A pause already there counts.
    """
    changing = [(i, s.weight) for i, s in enumerate(steps) if isinstance(s, SetWeight) and s.weight]
    if not changing:
        return (Pause(None), *steps)
    first, weight = changing[0]
    gate = first if weight > UNAPPROVED_CANARY_MAX_WEIGHT else first + 1
    if gate < len(steps) and steps[gate] == Pause(None):
        return steps
    return (*steps[:gate], Pause(None), *steps[gate:])


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
    desired: DesiredState, weight: int, baselines: Mapping[ObjectKey, dict[str, Any] | None]
) -> DesiredState:
    """Git's state with each flag set replaced by its canary at ``weight``.

    ``baselines`` holds each flag set's document as published before the
    rollout (None when it did not exist). At 100 the flag sets are Git's own.
    """
    if weight >= 100:
        return desired
    objects = []
    for obj in desired.objects:
        if obj.flag_set is None:
            objects.append(obj)
            continue
        canary = canary_flag_set(
            baselines.get(obj.key), obj.flag_set.document, weight, metadata={CANARY_WEIGHT_KEY: weight}
        )
        content = replace(obj.content, data={flag_set_key(obj.name): flag_set_json(canary)})
        objects.append(replace(obj, canary_document=canary, content=content))
    return DesiredState(policy=desired.policy, objects=tuple(objects))


def desired_hash(desired: DesiredState) -> str:
    """One hash over the whole revision's content: what an approval approves (``content_hash``)."""
    return desired.content_hash
