"""The words Sluice uses for what happened: one vocabulary for models, API, CLI and pages. Pure."""

from __future__ import annotations

from enum import StrEnum


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

    @property
    def successful(self) -> bool:
        """A sync that leaves a rollout paused or queued did what it should."""
        return self in SUCCESSFUL_OUTCOMES


SUCCESSFUL_OUTCOMES = frozenset(
    {Outcome.APPLIED, Outcome.UNCHANGED, Outcome.COMPLETED, Outcome.PAUSED, Outcome.QUEUED}
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
    COMPLETED = "completed"
    FAILED = "failed"
    CONSUMERS = "consumers"  # a step's workloads were restarted, or became healthy, or failed


class Waiting(StrEnum):
    """What a paused rollout waits for."""

    NOTHING = ""
    APPROVAL = "approval"
    TIMER = "timer"
    ANALYSIS = "analysis"
    CONSUMERS = "consumers"  # the workloads that read a step's ConfigMaps, to be healthy


class PreviewOutcome(StrEnum):
    """How a preview of a revision (``gitops diff --revision``, the dashboard, the API) ended."""

    PLANNED = "planned"  # valid: the plan against the cluster as it is now; nothing applied
    REJECTED = "rejected"  # the revision is invalid: its errors, file by file
    INVALID_REVISION = "invalid-revision"  # not a ref or commit a preview may ask for; nothing fetched
    NOT_FOUND = "not-found"  # the remote has no such ref or commit
    UNAVAILABLE = "unavailable"  # Git or the cluster did not answer; worth trying again
    FAILED = "failed"  # anything else that kept the revision from being planned
