"""Revisions of a source: fetch the branch tip and record it, then load and validate it (cached per worker).

A revision is validated as a whole against the rules and the source's current
administrator scope before anything touches a cluster; a rejected one is
stored with every error (file, line, field) and announced. Its flag keys are
checked against those other sources publish until it is accepted (``flag_keys_elsewhere``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from gitops import caches, metrics
from gitops.desired.errors import RevisionRejected, ValidationError, source_path_error
from gitops.desired.flag_keys import flag_keys, published_elsewhere_errors
from gitops.desired.limits import Limits
from gitops.desired.policy import POLICY_FILE
from gitops.desired.revision import (
    READ_PATHS,
    DesiredState,
    ParseCache,
    RevisionIndex,
    file_count_problem,
    load_revision_changes,
    load_revision_indexed,
    shown_path,
)
from gitops.desired.scope import AdminScope
from gitops.errors import PermanentError, TemporaryError
from gitops.fetch.credentials import configured_scope, resolve_credentials
from gitops.fetch.mirror import (
    CommitInfo,
    FetchResult,
    GitMirror,
    NotABlob,
    NotARegularFile,
    OverlongTreeEntry,
    SourcePathMissing,
    SourcePathNotADirectory,
    TooManySkippedEntries,
)
from gitops.fetch.mirror_sweep import mirror_path, mirrors_root, mirrors_sweep, mirrors_sweep_due
from gitops.fetch.refs import RequestedRevision
from gitops.models import PERSON_LENGTH, ApplyIntent, Revision, Rollout, Source, known_cluster_names
from gitops.prepared import PreparedSelect, PreparedUpdate
from gitops.record import notifications
from gitops.record.bulk import row_create_once
from gitops.redaction import redact
from gitops.selectors import flag_keys_published_by_others

log = logging.getLogger("gitops.fetch")


def mirror_for(source: Source) -> GitMirror:
    mirrors_root().mkdir(parents=True, exist_ok=True)
    return GitMirror(
        mirror_path(source),
        max_fetch_bytes=settings.SLUICE_MAX_FETCH_BYTES,
        max_git_memory=settings.SLUICE_MAX_GIT_MEMORY,
        ssh_known_hosts=settings.SLUICE_SSH_KNOWN_HOSTS,
    )


# Every pass asks these of its source: compiled once.
_REVISION_OF_COMMIT: PreparedSelect[Revision] = PreparedSelect(
    lambda source_id, commit: Revision.objects.filter(source_id=source_id, commit=commit)[:1], int, str
)
# The last rollout that completed a revision other than the head, read from the source's directory as it
# is now (or not known to be from another): the commits since it are what a new rollout brings there.
_LAST_COMPLETED: PreparedSelect[Rollout] = PreparedSelect(
    lambda source_id, head_id, path: (
        Rollout.objects.filter(source_id=source_id, phase=Rollout.Phase.COMPLETED)
        .filter(Q(path=path) | Q(path__isnull=True))
        .exclude(revision_id=head_id)
        .select_related("revision")
        .order_by("-finished_at", "-id")[:1]
    ),
    int,
    int,
    str,
)


# Written by every pass that fetches, and by each new revision found valid. Only while the source follows
# what the pass fetched: moved to another repository or branch meanwhile, its head is not yet known.
_FETCHED: PreparedUpdate = PreparedUpdate(
    lambda source_id, now, commit, url, branch: (
        Source.objects.filter(pk=source_id, url=url, branch=branch),
        {"last_fetched_at": now, "last_commit": commit},
    ),
    int,
    datetime,
    str,
    str,
    str,
)
_VALID: PreparedUpdate = PreparedUpdate(
    lambda revision_id: (
        # Only over an answer not yet given: `gitops diff`, without the source's lock, validated a new
        # revision while a pass applied it, and wrote VALID over its APPLIED.
        Revision.objects.filter(
            pk=revision_id, outcome__in=(Revision.Outcome.PENDING, Revision.Outcome.REJECTED)
        ),
        {"outcome": Revision.Outcome.VALID, "errors": []},
    ),
    int,
)


def revision_fetch(source: Source, *, interrupted: Callable[[], bool] | None = None) -> tuple[Revision, bool]:
    """Fetches the branch and records its tip; also whether the branch was force-pushed. ``interrupted``
    is asked every second while git runs, and stops the fetch (``FetchInterrupted``) when true."""
    credentials = resolve_credentials(source.credentials_ref, scope=configured_scope(source.credentials_ref))
    if mirrors_sweep_due():
        mirrors_sweep(passing=source.pk)
    with mirror_for(source) as mirror, metrics.FETCH_SECONDS.labels(source.name).time():
        fetched = mirror.fetch(source.url, source.branch, credentials, interrupted=interrupted)
        revision = _REVISION_OF_COMMIT.first(source.pk, fetched.commit)
        if revision is None:
            revision = _revision_create(source, fetched, mirror.commit_info(fetched.commit))
        if fetched.forced:
            log.warning(
                "force push detected source=%s from=%s to=%s", source.name, fetched.previous, fetched.commit
            )
    _FETCHED(source.pk, timezone.now(), fetched.commit, source.url, source.branch)
    return revision, fetched.forced


def _revision_create(source: Source, fetched: FetchResult, info: CommitInfo) -> Revision:
    """The new revision's row; the one a concurrent pass (a preview) wrote first, if it won."""
    created = row_create_once(
        Revision.objects,
        source=source,
        commit=fetched.commit,
        # A pusher chooses these: cut to fit rather than fail every poll on a long one.
        author_name=_fit(info.author_name, PERSON_LENGTH),
        author_email=_fit(info.author_email, PERSON_LENGTH),
        message=info.message,  # cut to MESSAGE_LENGTH in CommitInfo
        committed_at=info.committed_at,
        force_pushed_over=(fetched.previous or "") if fetched.forced else "",
    )
    return created or Revision.objects.get(source=source, commit=fetched.commit)


def _fit(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def validation_scope(source: Source, known_clusters: frozenset[str] | None = None) -> AdminScope:
    """What the administrator allows the source, and the clusters that exist (a target names one);
    ``known_clusters`` when the caller has just read them."""
    known = known_cluster_names() if known_clusters is None else known_clusters
    return dataclasses.replace(source.scope, known_clusters=known)


def revision_desired_state(
    source: Source, revision: Revision, *, known_clusters: frozenset[str] | None = None
) -> DesiredState | None:
    """Loads and validates a revision from the mirror, or records it as rejected and returns None.

    The clusters that exist are part of the scope it is validated under, so registering or
    removing a cluster validates the revision again. ``known_clusters``: those clusters, when
    the caller read them in this pass (otherwise one query).
    """
    scope = validation_scope(source, known_clusters)
    cache = caches.for_source(source.pk)
    # An administrator may move a source to another directory: the same commit then means other files.
    key = f"{revision.commit}:{source.path}"
    known = cache.desired_for(key, scope)
    if known is not None:
        # Its files are valid under this scope. A row that says rejected (under a narrower scope, or for a
        # flag key another source publishes) is marked valid once no other source publishes its keys.
        return _alone_with_its_flag_keys(source, revision, known)  # one query, while not yet accepted
    if revision.outcome == Revision.Outcome.REJECTED and cache.rejected == (key, scope):
        return None  # as this process rejected it, under the same scope: the row holds why
    limits = Limits.from_settings(settings)
    with mirror_for(source) as mirror:
        try:
            loaded = _load_changes(mirror, cache, revision.commit, source.path, limits=limits, scope=scope)
            if loaded is None:
                loaded = _load_whole(
                    mirror, revision.commit, source.path, limits, parsed=cache.parsed, scope=scope
                )
        except RevisionRejected as rejected:
            revision_reject(source, revision, rejected)
            cache.rejected = (key, scope)
            return None
        finally:
            cache.parsed.forget_failed()  # parsed once for both loads, not kept for the next pass
    desired, index = loaded
    cache.index = (revision.commit, source.path, index)
    if list(desired.policy.clusters) != list(source.target_clusters or []):
        # What `gitops clusters` and remove-cluster go by: a cluster is not removed under a source.
        Source.objects.filter(pk=source.pk).update(target_clusters=list(desired.policy.clusters))
    # Kept whatever other sources publish: the next pass asks them again, and parses nothing.
    cache.desired = (key, scope, desired)
    return _alone_with_its_flag_keys(source, revision, desired)


def _alone_with_its_flag_keys(
    source: Source, revision: Revision, desired: DesiredState
) -> DesiredState | None:
    """``desired``, once no other source publishes one of its flag keys where it would publish it;
    otherwise the revision is recorded as rejected, each such key named, and None.

    Asked at every pass until the revision is out (``_went_out``): a new one, one rejected before (the
    other source may take the key out at any time, and then it goes through without a push), one valid
    but held back (a freeze, a window, a queue) while another source may have started publishing the key,
    one whose rollouts were all rolled back (a retry), and one the branch went back to. One that is out
    is not asked again: a catalog that lags what the clusters serve (a rollout's rows are written after
    its step's applies) would otherwise reject, and roll back, a revision that went out first, or stop an
    applied one's self-heal.
    A revision without flag sets asks nothing (``flag_keys_elsewhere``).
    """
    asked = bool(flag_keys(desired).definitions) and not _went_out(source, revision)
    conflicts = flag_keys_elsewhere(source, desired) if asked else []
    if conflicts:
        rejected = RevisionRejected(conflicts)
        stored = [error.as_dict() for error in rejected.errors]
        if revision.outcome != Revision.Outcome.REJECTED or revision.errors != stored:
            revision_reject(source, revision, rejected)  # written when it changes, not at every pass
            revision.outcome, revision.errors = Revision.Outcome.REJECTED, stored
        return None
    if revision.outcome in (Revision.Outcome.PENDING, Revision.Outcome.REJECTED):
        # Rejected before, valid now: the administrator widened the source's scope, or the other source
        # no longer publishes the flag key.
        _VALID(revision.pk)
        revision.outcome, revision.errors = Revision.Outcome.VALID, []
    return desired


def _went_out(source: Source, revision: Revision) -> bool:
    """Whether the revision is what the source's clusters serve now: the source's latest rollout is of it,
    and completed, or under way and has begun writing (its intents). Not one whose rollouts were all rolled
    back (aborted or failed: its retry is asked again, as its rollback took its keys out of the catalog and
    another source may have started publishing one since), nor one the branch went back to after a later
    commit went out (its keys left the catalog with that commit's rollout). Either was not asked, and
    published a key beside another source's. Nor one read from another directory (the source's --path
    moved): other content, whose rollout is still to start. Remembered per worker once completed, so that
    a settled poll asks the database nothing more."""
    if revision.outcome in (Revision.Outcome.PENDING, Revision.Outcome.REJECTED):
        return False
    cache = caches.for_source(source.pk)
    if cache.went_out is not None and cache.went_out[1] != source.path:
        cache.went_out = None  # moved: moved back later, that directory's rollout may have been rolled back
    if cache.went_out == (revision.pk, source.path):
        return True
    latest = (
        Rollout.objects.filter(source_id=source.pk)
        .order_by("-id")
        .values_list("pk", "revision_id", "phase", "path")
        .first()
    )
    if latest is None or latest[1] != revision.pk or latest[3] not in (None, source.path):
        return False
    pk, _, phase, _ = latest
    if phase == Rollout.Phase.COMPLETED:
        cache.went_out = (revision.pk, source.path)
        return True
    return phase in Rollout.ACTIVE_PHASES and ApplyIntent.objects.filter(rollout_id=pk).exists()


def flag_keys_elsewhere(source: Source, desired: DesiredState) -> list[ValidationError]:
    """An error at each flag key of ``desired`` another source publishes into a cluster's flags namespace
    ``desired`` publishes it into too, or its rollout under way claimed there: flagd would serve whichever
    definition it read last. Two queries, on a revision with flag sets only; the source's own keys never
    conflict with it."""
    keys = flag_keys(desired)
    if not keys.definitions:
        return []
    published = flag_keys_published_by_others(source.pk, keys.places, keys.hashes)
    return published_elsewhere_errors(keys.definitions, published)


def _listing(
    mirror: GitMirror, commit: str, path: str, limits: Limits
) -> tuple[dict[str, str], dict[str, int]]:
    """The files Sluice reads at ``commit`` (path -> blob, path -> size), listed with their sizes so that
    limits reject a revision before any blob is read. Raises RevisionRejected when there are more than
    ``max_files``: the listing stopped there, and what it left out must never go unnoticed (a file
    named like a directory, ``configmaps`` say, is listed too, so every listed file counts)."""
    try:
        # The policy file is a regular file or absent: one that is a symlink, a submodule or a directory,
        # skipped like the rest, left the revision validated under the default policy, unnoticed.
        tree = mirror.list_tree(
            commit, path, paths=READ_PATHS, max_entries=limits.max_files + 1, files_only=(POLICY_FILE,)
        )
    except TooManySkippedEntries as exc:
        advice = f"{exc}; Sluice reads regular files only: remove them, or move them out of what it reads"
        raise RevisionRejected([ValidationError(shown_path(exc.example), None, "", advice)]) from None
    except OverlongTreeEntry as exc:
        advice = f"{exc}: Sluice reads paths of at most 1,000 characters; rename it"
        raise RevisionRejected([ValidationError(shown_path(exc.example) + "…", None, "", advice)]) from None
    except NotARegularFile as exc:
        advice = f"{exc.kind}; Sluice reads regular files only"
        raise RevisionRejected([ValidationError(shown_path(exc.path), None, "", advice)]) from None
    except (SourcePathMissing, SourcePathNotADirectory) as exc:
        raise RevisionRejected([_source_path_problem(exc)]) from None
    if problem := file_count_problem(tree, limits):
        raise RevisionRejected([problem])
    return {name: entry.blob for name, entry in tree.items()}, {
        name: entry.size for name, entry in tree.items()
    }


def _source_path_problem(exc: SourcePathMissing | SourcePathNotADirectory) -> ValidationError:
    """The source's path gone from the commit, or not a directory there: the commit's doing (a pusher
    moved or replaced it), so the revision is rejected, naming the path from the repository's root."""
    return source_path_error(shown_path(exc.path), None if isinstance(exc, SourcePathMissing) else exc.kind)


def _load_whole(
    mirror: GitMirror, commit: str, path: str, limits: Limits, *, parsed: ParseCache, scope: AdminScope
) -> tuple[DesiredState, RevisionIndex]:
    """The revision at ``commit`` loaded from its whole tree (``load_revision_indexed``); raises
    RevisionRejected, also for a listed file whose object is not a file's content (NotABlob)."""
    files, sizes = _listing(mirror, commit, path, limits)
    try:
        return load_revision_indexed(
            files, mirror.read_blobs, sizes=sizes, limits=limits, cache=parsed, scope=scope
        )
    except NotABlob as exc:
        # Only the object is known where it was read: the listing names every file that holds it.
        named = sorted(name for name, blob in files.items() if blob == exc.object_id) or [exc.object_id]
        advice = (
            f"listed as a file, but its object {exc.object_id} is a {exc.kind}, not a file's content "
            "(git writes no such tree); Sluice reads regular files only: commit the file again"
        )
        raise RevisionRejected(
            [ValidationError(shown_path(name), None, "", advice) for name in named]
        ) from None


# Past this many changed files a commit is loaded by listing its whole tree: as cheap by then.
MAX_CHANGED_FILES = 512


def _load_changes(
    mirror: GitMirror, cache: caches.SourceCache, commit: str, path: str, *, limits: Limits, scope: AdminScope
) -> tuple[DesiredState, RevisionIndex] | None:
    """The revision at ``commit``, loaded from what changed since the last valid revision this worker
    loaded (``git diff-tree``), or None when that cannot be done and the whole tree must be listed."""
    if cache.index is None:
        return None
    base, base_path, index = cache.index
    if base_path != path or base == commit:
        return None
    try:
        changed = mirror.tree_changes(base, commit, path, paths=READ_PATHS, max_changes=MAX_CHANGED_FILES)
    except (TemporaryError, PermanentError) as exc:
        log.info("loading %s from the whole tree: %s", commit, exc)
        return None
    if changed is None or any(name.startswith(f"{POLICY_FILE}/") for name in changed):
        # Files under a directory named like the policy file: one that became, or is added as, a directory
        # shows only its files, and the whole listing is what refuses the policy file being one.
        return None
    changes = {
        name: (entry.blob, entry.size) if entry is not None else None for name, entry in changed.items()
    }
    return load_revision_changes(
        index, changes, mirror.read_blobs, limits=limits, cache=cache.parsed, scope=scope
    )


def _load(mirror: GitMirror, source: Source, commit: str) -> DesiredState:
    """The source's files at ``commit``, validated as ``revision_desired_state`` validates them, recording
    nothing; raises RevisionRejected."""
    limits = Limits.from_settings(settings)
    parsed = caches.for_source(source.pk).parsed  # keyed by blob id: a preview parses what a sync would
    scope = validation_scope(source)
    try:
        desired, _ = _load_whole(mirror, commit, source.path, limits, parsed=parsed, scope=scope)
    finally:
        parsed.forget_failed()
    # As a sync would reject it: for a flag key another source publishes where it would publish it too.
    if conflicts := flag_keys_elsewhere(source, desired):
        raise RevisionRejected(conflicts)
    return desired


@dataclass(frozen=True)
class LoadedRevision:
    """Any revision of a source's remote, loaded for a preview: valid (``desired``) or not (``errors``)."""

    info: CommitInfo
    desired: DesiredState | None
    errors: tuple[ValidationError, ...] = ()


def revision_load(source: Source, requested: RequestedRevision) -> LoadedRevision:
    """Fetches what ``requested`` names when the mirror lacks it, and validates it against the
    source's current scope, as a sync would.

    Records nothing: no Revision row, no rejection notice, and the followed branch's ref does not move
    (the fetched ref is deleted once read). Raises InvalidRevision, RevisionNotFound, or what a fetch raises.
    """
    credentials = resolve_credentials(source.credentials_ref, scope=configured_scope(source.credentials_ref))
    timeout = settings.SLUICE_PREVIEW_TIMEOUT_SECONDS
    with (
        mirror_for(source) as mirror,
        mirror.held_revision(source.url, requested, credentials, timeout=timeout) as commit,
    ):
        info = mirror.commit_info(commit)
        try:
            return LoadedRevision(info, _load(mirror, source, commit))
        except RevisionRejected as rejected:
            return LoadedRevision(info, None, tuple(rejected.errors))


# A notification carries this many of a rejection's errors: the first, and the last (how many were left
# out, or where the checks stopped).
NOTIFIED_ERRORS = 50


def _notified(errors: list[ValidationError]) -> list[ValidationError]:
    return errors if len(errors) <= NOTIFIED_ERRORS else [*errors[: NOTIFIED_ERRORS - 1], errors[-1]]


def revision_reject(source: Source, revision: Revision, rejected: RevisionRejected) -> None:
    """Records the revision rejected, with its errors, and announces it the first time: the mark and its
    notification commit together, or neither. Apart, a worker killed between them (or an outbox write
    that failed) left a rejection marked and never told, since a revision already marked is not told
    again."""
    errors = [e.as_dict() for e in rejected.errors]
    rows = Revision.objects.filter(pk=revision.pk)
    with transaction.atomic():
        newly = rows.exclude(outcome=Revision.Outcome.REJECTED).update(
            outcome=Revision.Outcome.REJECTED, errors=errors
        )
        if not newly:
            rows.update(errors=errors)
            return  # known already: announced once, not on every poll
        notifications.emit(
            notifications.REVISION_REJECTED,
            source=source,
            subject=f"revisions/{revision.commit}",
            data={
                "revision": revision.commit,
                "errors": [redact(str(e)) for e in _notified(rejected.errors)],
            },
        )
    log.warning(
        "revision rejected source=%s commit=%s errors=%d", source.name, revision.commit, len(rejected.errors)
    )


# (mirror, head commit, other commit, directory) -> whether the directory's trees are one: asked at every
# pass of a source whose head came after its rollout's commit, and immutable once both commits are known.
_SAME_DIRECTORY: dict[tuple[str, str, str, str], bool] = {}
_SAME_DIRECTORY_KEPT = 4096


def directory_unchanged(source: Source, head: Revision, rollout: Rollout) -> bool:
    """Whether ``head`` holds the source's directory byte for byte as ``rollout``'s commit held it, read
    from the same directory: a commit elsewhere in a monorepo (or an empty one) brings nothing new, and
    the rollout stands for it. False when either commit is no longer in the mirror."""
    if rollout.revision_id == head.pk:
        return not rollout.directory_moved(source)
    if rollout.directory_moved(source):
        return False
    path = source.path.strip("/")
    key = (str(mirror_path(source)), head.commit, rollout.revision.commit, path)
    known = _SAME_DIRECTORY.get(key)
    if known is not None:
        return known
    with mirror_for(source) as mirror:
        ours = mirror.directory_tree(head.commit, path)
        theirs = mirror.directory_tree(rollout.revision.commit, path)
    if ours is None or theirs is None:
        return False  # not known now: not remembered either
    if len(_SAME_DIRECTORY) >= _SAME_DIRECTORY_KEPT:
        _SAME_DIRECTORY.clear()
    _SAME_DIRECTORY[key] = ours == theirs
    return ours == theirs


def commit_identities(source: Source, head: Revision) -> list[str]:
    """Authors and committers of every commit a rollout of ``head`` brings, since the last completed one
    of the source's directory: a source moved to another directory brings that directory's content, as a
    first rollout does (the commits before ``head``, as many as ``commit_identities`` reads)."""
    last = _LAST_COMPLETED.first(source.pk, head.pk, source.path)
    with mirror_for(source) as mirror:
        found = mirror.commit_identities(
            head.commit,
            since=last.revision.commit if last else None,
            range_limit=settings.SLUICE_SELF_APPROVAL_RANGE_COMMITS,
            path=source.path.strip("/"),
        )
        # None since the last rollout (the branch reset to an older commit): the head's own author and
        # committer, where only its author was judged.
        return sorted(found or mirror.commit_identities(head.commit, limit=1))
