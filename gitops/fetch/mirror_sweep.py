"""Where each source's mirror lives on this host, and the sweep of mirrors no source reads any more.

A mirror is named by its source and by the repository it mirrors (a hash of the URL): a source moved to
another repository fetches into a new mirror, and the old one, whose commits a preview would still have
served by id, is the sweep's. So is a deleted source's, which held its repository's files (configuration
that may hold secrets) on every worker's volume for good (before 2026-12-07).
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
from pathlib import Path

from django.conf import settings

from gitops.locks import source_lock_if_free
from gitops.models import Source
from gitops.schedule import syncs_requested_meanwhile

log = logging.getLogger("gitops.fetch")

# One fetch in this many sweeps the host's mirrors first: every worker that fetches sweeps its own volume.
FETCHES_PER_SWEEP = 64


def mirrors_root() -> Path:
    return Path(settings.SLUICE_DATA_DIR) / "mirrors"


def mirror_path(source: Source) -> Path:
    """The source's mirror of the repository its URL names now."""
    mirrored = hashlib.sha256(source.url.encode()).hexdigest()[:16]
    return mirrors_root() / f"{source.pk}-{mirrored}.git"


def mirrors_sweep_due() -> bool:
    return random.randrange(FETCHES_PER_SWEEP) == 0  # noqa: S311 - a schedule, not a secret


# Mirrors one sweep deletes at most: the first sweep after the upgrade that renamed them all, on a host that
# keeps its mirrors, would otherwise delete every one inside one pass.
MAX_DELETED_PER_SWEEP = 8


def mirrors_sweep(*, passing: int | None = None) -> int:
    """Deletes this host's mirrors that no source reads: a deleted source's, one of a repository its
    source no longer follows, one named before mirrors were named by repository; at most
    MAX_DELETED_PER_SWEEP, the rest at the next sweeps. Each under its source's lock, taken only when free
    (nothing waits), and judged again under it: no pass of the source uses the mirror then. ``passing``:
    the source whose pass sweeps, left alone (its lock is that pass's own, which the session would take
    again). A preview, which takes no lock, of a source moved meanwhile may find its mirror gone and
    fails; the next preview fetches again. Returns how many were deleted."""
    found: dict[int, list[Path]] = {}
    for path in mirrors_root().glob("*.git"):
        number = path.name.removesuffix(".git").split("-", 1)[0]
        if number.isdigit() and int(number) != passing:
            found.setdefault(int(number), []).append(path)
    if not found:
        return 0
    live = Source.objects.filter(pk__in=found).only("url")
    wanted = {source.pk: mirror_path(source).name for source in live}
    deleted = 0
    for source_id, paths in sorted(found.items()):
        if deleted >= MAX_DELETED_PER_SWEEP:
            break
        if any(path.name != wanted.get(source_id) for path in paths):
            deleted += _deleted(Source(pk=source_id), paths, MAX_DELETED_PER_SWEEP - deleted)
    return deleted


def _deleted(source: Source, paths: list[Path], at_most: int) -> int:
    with source_lock_if_free(source) as free:
        if not free:  # a pass, a removal or a decision holds it: the next sweep
            return 0
        # Read again under the lock: the source may have moved (back) since the list was made.
        now = Source.objects.filter(pk=source.pk).only("url").first()
        current = mirror_path(now).name if now is not None else None
        stale = [path for path in paths if path.name != current][:at_most]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
            log.info("deleted the mirror %s: no source reads it any more", path.name)
    # A push while the sweep held the lock found the source busy and left only a request, which a pass
    # holding the lock runs after it, and the sweep does not: it waited for the orphan sweep (30 s), or
    # for the next poll where beat does not run.
    syncs_requested_meanwhile([source.pk])
    return len(stale)


def mirror_remove(source: Source) -> None:
    """Deletes this host's mirrors of ``source`` (its removal ended); other hosts' go at their sweep."""
    for path in mirrors_root().glob(f"{source.pk}-*.git"):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(mirrors_root() / f"{source.pk}.git", ignore_errors=True)
