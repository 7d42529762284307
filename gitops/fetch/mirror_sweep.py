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


def mirrors_sweep() -> int:
    """Deletes this host's mirrors that no source reads: a deleted source's, one of a repository its
    source no longer follows, one named before mirrors were named by repository. Each under its source's
    lock, taken only when free (nothing waits): no pass or preview of the source uses the mirror then.
    Returns how many were deleted."""
    found: dict[int, list[Path]] = {}
    for path in mirrors_root().glob("*.git"):
        number = path.name.removesuffix(".git").split("-", 1)[0]
        if number.isdigit():
            found.setdefault(int(number), []).append(path)
    if not found:
        return 0
    wanted = {
        source.pk: mirror_path(source).name for source in Source.objects.filter(pk__in=found).only("url")
    }
    deleted = 0
    for source_id, paths in sorted(found.items()):
        stale = [path for path in paths if path.name != wanted.get(source_id)]
        if stale:
            deleted += _deleted(Source(pk=source_id), stale)
    return deleted


def _deleted(source: Source, stale: list[Path]) -> int:
    with source_lock_if_free(source) as free:
        if not free:  # a pass, a removal or a preview holds it: the next sweep
            return 0
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
            log.info("deleted the mirror %s: no source reads it any more", path.name)
        return len(stale)


def mirror_remove(source: Source) -> None:
    """Deletes this host's mirrors of ``source`` (its removal ended); other hosts' go at their sweep."""
    for path in mirrors_root().glob(f"{source.pk}-*.git"):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(mirrors_root() / f"{source.pk}.git", ignore_errors=True)
