"""The words Sluice uses for what happened: one vocabulary for models, API, CLI and pages. Pure."""

from __future__ import annotations

from enum import StrEnum

# The actor of what Sluice does on its own: polls, timers, automatic steps, passes nobody asked for.
SYSTEM_ACTOR = "sluice"


class Outcome(StrEnum):
    """How a sync, or one pass of a rollout, ended."""

    APPLIED = "applied"  # something changed in the cluster
    UNCHANGED = "unchanged"  # the cluster already matched
    REJECTED = "rejected"  # the revision is invalid; nothing was applied
    FAILED = "failed"  # the cluster refused a change, or the sync could not run
    PAUSED = "paused"  # a rollout waits: approval, a timer, an analysis retry
    COMPLETED = "completed"  # a rollout reached its last step
    QUEUED = "queued"  # a new commit waits behind a running rollout
    ABORTED = "aborted"  # a rollout was rolled back on request or by its analysis
    SUPERSEDED = "superseded"  # a rollout was rolled back for a newer commit
    COALESCED = "coalesced"  # another worker runs the request
    HELD = "held"  # a freeze or a sync window holds changes back: fetched and planned, nothing applied
    SUSPENDED = "suspended"  # an automatic sync of a suspended source: nothing ran
    GONE = "gone"  # the source was deleted before the sync ran

    @property
    def successful(self) -> bool:
        """A sync that leaves a rollout paused or queued did what it should."""
        return self in SUCCESSFUL_OUTCOMES


SUCCESSFUL_OUTCOMES = frozenset(
    {Outcome.APPLIED, Outcome.UNCHANGED, Outcome.COMPLETED, Outcome.PAUSED, Outcome.QUEUED, Outcome.HELD}
)


class ChangeAction(StrEnum):
    """What a change-log entry did to one object."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    SELF_HEAL = "self-heal"
    REPLACE = "replace"  # an immutable object: deleted, then created
    ROLLBACK = "rollback"  # restored to what it held before a rollout
    RESTART = "restart"  # a workload that reads a changed ConfigMap got a new pod template stamp
    RELEASE = "release"  # a deleted source let go of an object it kept: provenance and ownership removed


class RolloutEventKind(StrEnum):
    """A line of a rollout's timeline; some leave Sluice as CloudEvents too (see record.notifications)."""

    STARTED = "started"
    STEP = "step"  # a weight was applied
    PAUSED = "paused"
    RESUMED = "resumed"
    ANALYSIS = "analysis"
    APPROVED = "approved"
    PROMOTED = "promoted"
    ABORT_REQUESTED = "abort-requested"
    ROLLED_BACK = "rolled-back"
    ROLLBACK_FAILED = "rollback-failed"
    ROLLBACK_WAIVED = "rollback-waived"  # an administrator let a cluster off a rollback it was owed
    COMPLETED = "completed"
    FAILED = "failed"
    CONSUMERS = "consumers"  # a step's workloads were restarted, or became healthy, or failed
    OVERRIDE = "override"  # an administrator let a promote through a freeze or a closed sync window


class Waiting(StrEnum):
    """What a paused rollout waits for."""

    NOTHING = ""
    APPROVAL = "approval"
    TIMER = "timer"
    ANALYSIS = "analysis"
    CONSUMERS = "consumers"  # the workloads that read a step's ConfigMaps, to be healthy
    CLUSTER = "cluster"  # a cluster the step needs, to answer again (tried every few seconds)


class StaleReason(StrEnum):
    """Why the Flags page marks a flag stale (see gitops.desired.flag_summary for the first)."""

    ONE_VARIANT = "serves one variant to everyone"
    UNCHANGED = "unchanged for a long time"  # longer than SLUICE_STALE_FLAG_DAYS


class FlagReach(StrEnum):
    """Who has a flag's new definition (or its removal) while its canary runs, between 0 and 100%."""

    SPLIT = "split"  # the rollout's share of users
    AT_ONCE = "at_once"  # everyone, from the canary's first publication: the two sides serve the same
    # Nobody until 100: it moves between flag sets, or its flag set was dropped (served until the prune). A
    # flag whose variants change type is held too, but its row is the old definition everyone keeps.
    AT_FULL = "at_full"


class Staleness(StrEnum):
    """The Flags page's staleness filter."""

    ANY = ""
    STALE = "stale"
    FRESH = "fresh"


class SourceAuditAction(StrEnum):
    """What an administrator did to a source (the audit trail, beside the change log)."""

    CREATE = "create"
    UPDATE = "update"
    SUSPEND = "suspend"
    RESUME = "resume"
    DELETE = "delete"  # a removal was requested
    DELETED = "deleted"  # the removal finished: the source is gone
    FORGET_CLUSTER = "forget-cluster"  # a cluster gone for good was forgotten with what it held
    WEBHOOK_SECRET = "webhook-secret"  # noqa: S105 - its webhook secret was set or rotated, never the secret


class ClusterAuditAction(StrEnum):
    """What an administrator did to the cluster registry (the clusters' audit trail)."""

    ADD = "add"
    REMOVE = "remove"
    FORGET = "forget"  # removed with what Sluice kept about it: a cluster gone for good
    UPDATE = "update"  # its registration changed in place (update-cluster: the TLS allowance)


class AccessAuditAction(StrEnum):
    """What an administrator did to a person's access (the access trail): roles and verified emails."""

    GRANT = "grant"  # a role given; Sluice's other roles taken away
    VERIFY_EMAIL = "verify-email"  # an email confirmed as the user's: self-approval checks trust it


class AuditVia(StrEnum):
    """Where an administrator's change came from."""

    CLI = "cli"
    DASHBOARD = "dashboard"
    API = "api"


class ObjectsOnRemoval(StrEnum):
    """What deleting a source does to the objects it manages."""

    KEEP = "keep"  # they stay; Sluice's labels, annotations and field ownership are removed
    PRUNE = "prune"  # they are deleted


class RemovalStatus(StrEnum):
    """How far a source's removal has got."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # every object kept or pruned, the source deleted
    FAILED = "failed"  # refused or some objects failed; the source stays (suspended) and can be deleted again


class PreviewOutcome(StrEnum):
    """How a preview of a revision (``gitops diff --revision``, the dashboard, the API) ended."""

    PLANNED = "planned"  # valid: the plan against the cluster as it is now; nothing applied
    REJECTED = "rejected"  # the revision is invalid: its errors, file by file
    INVALID_REVISION = "invalid-revision"  # not a ref or commit a preview may ask for; nothing fetched
    NOT_FOUND = "not-found"  # the remote has no such ref or commit
    UNAVAILABLE = "unavailable"  # Git or the cluster did not answer; worth trying again
    FAILED = "failed"  # anything else that kept the revision from being planned


# Among a rollout's commit identities when its range holds more commits than were read for them
# (SLUICE_SELF_APPROVAL_RANGE_COMMITS): nobody may approve where self-approval is forbidden, since a pusher
# could otherwise bury their own commit under filler, past what was read. No email git reads can hold
# "<" or ">", so no commit names it.
MORE_COMMITS_THAN_READ = "<more commits than were read>"
