"""Persistent state of the reconciler."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django.utils import timezone

from gitops.desired.content import KIND_LABEL, Content
from gitops.desired.policy import DEFAULT_HEALTH_TIMEOUT_SECONDS, ConsumerMode
from gitops.desired.scope import AdminScope
from gitops.plan import Action, PlanItem, diff_content
from gitops.plan.provenance import Provenance, live_content, live_provenance
from gitops.plan.provenance import manifest as configmap_manifest
from gitops.vocabulary import ChangeAction, Waiting

SOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# SHA-1 object ids have 40 hex digits, SHA-256 ones 64.
COMMIT_LENGTH = 64
# Commit metadata is the pusher's to choose: long values are cut to fit, never refused.
PERSON_LENGTH = 500
MAX_REQUIRED_APPROVALS = 10
CHANGE_ACTIONS = [(action.value, action.value) for action in ChangeAction]


def copied(instance: models.Model, fields: tuple[str, ...]) -> dict[str, Any]:
    """The named fields of ``instance``: one record built from another names what it takes, once."""
    return {name: getattr(instance, name) for name in fields}


class ContentJSONField(models.JSONField):
    """A JSONField for object content, which can be large.

    Django bulk-inserts PostgreSQL rows through UNNEST arrays, and psycopg
    escapes large JSON documents inside array literals slowly (about 1 ms per
    row). A field that names its own placeholder keeps bulk inserts on plain
    VALUES lists, where each document is sent as its own jsonb parameter.
    """

    def get_placeholder(self, value: Any, compiler: Any, connection: Any) -> str:
        return "%s"


def validate_source_name(value: str) -> None:
    # The name becomes a label value on every object the source manages.
    if len(value) > 63 or not SOURCE_NAME.match(value):
        raise DjangoValidationError(
            f"{value!r} is not a valid source name (lowercase letters, digits and '-', at most 63)"
        )


class Source(models.Model):
    name = models.CharField(max_length=63, unique=True, validators=[validate_source_name])
    url = models.CharField(max_length=2000, help_text="Git URL, without credentials")
    branch = models.CharField(max_length=255, default="main")
    path = models.CharField(
        max_length=1000, blank=True, default="", help_text="directory within the repository"
    )
    poll_interval = models.DurationField(default=timedelta(seconds=60))
    credentials_ref = models.CharField(
        max_length=500,
        blank=True,
        default="",
        help_text='where the secret lives: "env:VAR", "file:/path" or "ssh-key:/path"; never the secret',
    )
    allowed_namespaces = models.JSONField(
        default=list,
        blank=True,
        help_text="namespace globs this source may ever touch; empty means none, until an admin sets some",
    )
    # URL prefixes the repository's analysis steps may call; empty means no analysis step is allowed.
    analysis_url_prefixes = models.JSONField(default=list, blank=True)
    # A floor the repository cannot lower: approvers needed before a change goes past its first step.
    required_approvals = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    # Reconcile bookkeeping.
    next_poll_at = models.DateTimeField(default=timezone.now, db_index=True)
    sync_requested_at = models.DateTimeField(null=True, blank=True)
    last_fetched_at = models.DateTimeField(null=True, blank=True)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    last_commit = models.CharField(max_length=COMMIT_LENGTH, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    # Which workloads read which of the source's ConfigMaps, as last seen: {"ns/kind/name": [configmaps]}.
    consumer_map = models.JSONField(default=dict, blank=True)
    consumer_map_at = models.DateTimeField(null=True, blank=True)
    # Reconciles that failed in a row; the next poll backs off exponentially while it is above 0.
    consecutive_failures = models.PositiveIntegerField(default=0)
    # The plan the last reconcile computed (items that were not unchanged), for pages and the API.
    last_plan = ContentJSONField(default=dict, blank=True)
    # A Git host page for a commit, e.g. https://github.com/org/repo/commit/{commit}
    commit_url_template = models.CharField(max_length=500, blank=True, default="")
    # Encrypted with a key derived from SECRET_KEY (see gitops.secrets); never shown.
    webhook_secret_encrypted = models.TextField(blank=True, default="")
    # True while a sync task is queued and not yet started: a burst of pushes queues one.
    sync_queued = models.BooleanField(default=False)
    # Where rollout and revision events go, as CloudEvents (HTTP, structured mode).
    notify_urls = models.JSONField(default=list, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def scope(self) -> AdminScope:
        """What an administrator allows this source; its repository can only narrow it."""
        return AdminScope.of(self.allowed_namespaces or (), self.analysis_url_prefixes or ())


class Revision(models.Model):
    class Outcome(models.TextChoices):
        PENDING = "pending", "Pending"
        VALID = "valid", "Valid"
        REJECTED = "rejected", "Rejected"
        APPLIED = "applied", "Applied"
        FAILED = "failed", "Failed"
        QUEUED = "queued", "Queued behind a running rollout"

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="revisions")
    commit = models.CharField(max_length=COMMIT_LENGTH)
    author_name = models.CharField(max_length=PERSON_LENGTH, blank=True, default="")
    author_email = models.CharField(max_length=PERSON_LENGTH, blank=True, default="")
    message = models.TextField(blank=True, default="")
    committed_at = models.DateTimeField(null=True, blank=True)
    fetched_at = models.DateTimeField(default=timezone.now)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.PENDING)
    errors = models.JSONField(default=list, blank=True)
    # Set when this commit replaced a tip it does not descend from.
    force_pushed_over = models.CharField(max_length=COMMIT_LENGTH, blank=True, default="")
    summary = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints: ClassVar[list[Any]] = [
            models.UniqueConstraint(fields=["source", "commit"], name="revision_unique_commit")
        ]
        ordering: ClassVar[list[str]] = ["-fetched_at", "-id"]

    def __str__(self) -> str:
        return f"{self.source.name}@{self.commit[:12]}"

    @property
    def short_commit(self) -> str:
        return self.commit[:12]


class Rollout(models.Model):
    """Applying one revision, step by step. Without rollout steps it has a single step.

    Every transition is stored before the next action, and moves with a
    compare-and-swap ``update()`` on the phase and step, so a promote racing a
    reconcile cannot be lost or applied twice.
    """

    class Phase(models.TextChoices):
        PROGRESSING = "Progressing"
        PAUSED = "Paused"
        COMPLETED = "Completed"
        ABORTED = "Aborted"
        FAILED = "Failed"
        SUPERSEDED = "Superseded"

    Waiting = Waiting

    ACTIVE_PHASES: ClassVar[tuple[str, ...]] = (Phase.PROGRESSING, Phase.PAUSED)
    ENDED_PHASES: ClassVar[tuple[str, ...]] = (Phase.COMPLETED, Phase.ABORTED, Phase.FAILED, Phase.SUPERSEDED)

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="rollouts")
    revision = models.ForeignKey(Revision, on_delete=models.CASCADE, related_name="rollouts")
    phase = models.CharField(max_length=16, choices=Phase.choices, default=Phase.PROGRESSING, db_index=True)
    waiting_for = models.CharField(
        max_length=16, choices=[(w.value, w.value or "nothing") for w in Waiting], blank=True, default=""
    )
    pause_until = models.DateTimeField(null=True, blank=True, db_index=True)
    step_index = models.PositiveIntegerField(default=0)
    weight = models.PositiveSmallIntegerField(default=0)
    steps = models.JSONField(default=list, blank=True)
    analysis_failures = models.PositiveIntegerField(default=0)
    # Policy at the time the rollout started: a later commit cannot loosen it.
    approvals_required = models.PositiveSmallIntegerField(default=1)
    forbid_self_approval = models.BooleanField(default=False)
    # Authors' and committers' emails of every commit this rollout brings (lower case): none may approve it.
    commit_identities = models.JSONField(default=list, blank=True)
    # What a ConfigMap step does to the workloads that read it, and how long they may take to be healthy.
    consumers = models.CharField(
        max_length=8, choices=[(mode.value, mode.value) for mode in ConsumerMode], default=ConsumerMode.IGNORE
    )
    health_timeout_seconds = models.PositiveIntegerField(default=DEFAULT_HEALTH_TIMEOUT_SECONDS)
    # The consumers of the current wave and their state as the step gate last saw them, for pages.
    consumer_states = models.JSONField(default=list, blank=True)
    content_hash = models.CharField(max_length=64, blank=True, default="")
    promoted_by = models.CharField(max_length=150, blank=True, default="")
    abort_requested_by = models.CharField(max_length=150, blank=True, default="")
    abort_reason = models.TextField(blank=True, default="")
    message = models.TextField(blank=True, default="")
    created_by = models.CharField(max_length=150, default="sluice")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["-created_at", "-id"]
        indexes: ClassVar[list[Any]] = [models.Index(fields=["source", "phase"])]
        permissions = (("approve_rollout", "Can promote, abort and retry rollouts"),)

    def __str__(self) -> str:
        return f"rollout {self.pk} of {self.revision}"

    @property
    def is_active(self) -> bool:
        return self.phase in self.ACTIVE_PHASES

    # What running a revision again takes from an earlier rollout of it: the steps and gates it had.
    REPEATED_FIELDS: ClassVar[tuple[str, ...]] = (
        "source",
        "revision",
        "steps",
        "approvals_required",
        "forbid_self_approval",
        "commit_identities",
        "consumers",
        "health_timeout_seconds",
        "content_hash",
    )


class Approval(models.Model):
    """One person's approval of one gate (step) of one rollout, tied to the exact content."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="approvals")
    commit = models.CharField(max_length=COMMIT_LENGTH)
    step_index = models.PositiveIntegerField()
    content_hash = models.CharField(max_length=64)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approvals")
    username = models.CharField(max_length=150)
    comment = models.TextField(blank=True, default="")
    # Approved going to 100% at once; a full release needs as many of these as the gate needs approvals.
    full = models.BooleanField(default=False)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar[list[Any]] = [
            models.UniqueConstraint(fields=["rollout", "step_index", "user"], name="approval_once_per_gate")
        ]
        ordering: ClassVar[list[str]] = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.username} approved step {self.step_index} of rollout {self.rollout_id}"


class RolloutEvent(models.Model):
    """The rollout's timeline: steps applied, pauses, analysis runs, approvals, aborts."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=32)
    step_index = models.PositiveIntegerField(default=0)
    weight = models.PositiveSmallIntegerField(default=0)
    actor = models.CharField(max_length=150, default="sluice")
    message = models.TextField(blank=True, default="")
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.kind} at step {self.step_index} of rollout {self.rollout_id}"


class ApplyIntent(models.Model):
    """What a step is about to do to one object, written before it is done.

    Bookkeeping, not history: a crash between applying and logging leaves a
    pending intent, and the next run finishes it. The change log is ``Change``.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        DONE = "done"
        FAILED = "failed"

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="intents")
    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="intents")
    step_index = models.PositiveIntegerField(default=0)
    weight = models.PositiveSmallIntegerField(default=100)
    namespace = models.CharField(max_length=63)
    name = models.CharField(max_length=253)
    kind = models.CharField(max_length=32, default="ConfigMap")
    action = models.CharField(max_length=16, choices=CHANGE_ACTIONS)
    commit = models.CharField(max_length=COMMIT_LENGTH, help_text="the commit the applied content came from")
    manifest = ContentJSONField(null=True, blank=True, help_text="what is applied; null for a delete")
    before = ContentJSONField(null=True, blank=True)
    after = ContentJSONField(null=True, blank=True)
    before_hash = models.CharField(max_length=64, blank=True, default="")
    after_hash = models.CharField(max_length=64, blank=True, default="")
    # Provenance the object carried before, so a rollback restores it exactly.
    before_commit = models.CharField(max_length=COMMIT_LENGTH, blank=True, default="")
    before_content_hash = models.CharField(max_length=64, blank=True, default="")
    diff = ContentJSONField(default=list, blank=True)
    force = models.BooleanField(default=False)
    # Delete before applying: an immutable object cannot take new content.
    recreate = models.BooleanField(default=False)
    origin = models.CharField(max_length=1000, blank=True, default="")
    actor = models.CharField(max_length=150, default="sluice")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar[list[str]] = ["id"]

    def __str__(self) -> str:
        return f"{self.action} {self.namespace}/{self.name} ({self.status})"

    @classmethod
    def for_item(
        cls, rollout: Rollout, item: PlanItem, *, commit: str, actor: str, step_index: int, weight: int
    ) -> ApplyIntent:
        """What applying one plan item at a step will do, before it is done."""
        # Self-heal restores what was applied, so the object keeps the commit it came from.
        applied_commit = item.live_commit if item.action is Action.SELF_HEAL and item.live_commit else commit
        manifest = None
        if item.after is not None and item.desired is not None:
            provenance = Provenance(
                source=rollout.source.name,
                commit=applied_commit,
                content_hash=item.desired.content.hash,
                origin=item.desired.origin,
                kind=item.desired.kind,
            )
            manifest = configmap_manifest(item.namespace, item.name, item.after, provenance)
        return cls(
            rollout=rollout,
            source_id=rollout.source_id,
            step_index=step_index,
            weight=weight,
            namespace=item.namespace,
            name=item.name,
            action=ChangeAction(item.action.value),
            commit=applied_commit,
            manifest=manifest,
            before=item.before.as_dict() if item.before is not None else None,
            after=item.after.as_dict() if item.after is not None else None,
            before_hash=item.before_hash,
            after_hash=item.after_hash,
            before_commit=item.live_commit or "",
            before_content_hash=item.live_content_hash or "",
            diff=[change.as_dict() for change in item.diff],
            force=item.force,
            origin=item.desired.origin if item.desired else "",
            actor=actor,
        )

    @classmethod
    def restoring(
        cls, rollout: Rollout, first: ApplyIntent, live: Mapping[str, Any] | None, *, actor: str
    ) -> ApplyIntent | None:
        """Puts an object back as it was before ``first``, a rollout's first change to it.

        None when it already holds exactly that, content and provenance alike:
        a rollback run again changes nothing.
        """
        baseline = Content.from_dict(first.before) if first.before is not None else None
        if baseline is None and live is None:
            return None
        if baseline is not None and live is not None and _holds(live, baseline, first):
            return None
        current = live_content(live) if live is not None else None
        manifest = None
        if baseline is not None:
            kind = (first.manifest or {}).get("metadata", {}).get("labels", {}).get(KIND_LABEL, "configmap")
            provenance = Provenance(
                rollout.source.name, first.before_commit, first.before_content_hash, first.origin, kind
            )
            manifest = configmap_manifest(first.namespace, first.name, baseline, provenance)
        return cls(
            rollout=rollout,
            source_id=rollout.source_id,
            step_index=rollout.step_index,
            weight=rollout.weight,
            namespace=first.namespace,
            name=first.name,
            action=ChangeAction.ROLLBACK,
            commit=first.before_commit or rollout.revision.commit,
            manifest=manifest,
            before=current.as_dict() if current is not None else None,
            after=baseline.as_dict() if baseline is not None else None,
            before_hash=current.hash if current is not None else "",
            after_hash=baseline.hash if baseline is not None else "",
            diff=[change.as_dict() for change in diff_content(current, baseline)],
            force=True,
            recreate=bool(live and live.get("immutable")) and baseline is not None,
            origin=first.origin,
            actor=actor,
        )


def _holds(live: Mapping[str, Any], baseline: Content, first: ApplyIntent) -> bool:
    _, live_commit, live_hash = live_provenance(live)
    restored = live_content(live, desired_labels=baseline.labels, desired_annotations=baseline.annotations)
    return (
        restored == baseline and live_commit == first.before_commit and live_hash == first.before_content_hash
    )


# What a change-log entry keeps of the intent it records.
LOGGED_FROM_INTENT = (
    "source_id",
    "rollout_id",
    "commit",
    "namespace",
    "kind",
    "name",
    "action",
    "before_hash",
    "after_hash",
    "before",
    "after",
    "diff",
    "actor",
    "step_index",
    "weight",
)


class ChangeQuerySet(models.QuerySet["Change"]):
    def update(self, **kwargs: Any) -> int:
        raise TypeError("the change log is append-only")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise TypeError("the change log is append-only")


class Change(models.Model):
    """One change applied to a cluster: append-only, after netbox's ObjectChange.

    ``before`` and ``after`` hold the full content, so a rollback can restore
    exactly what was there. PostgreSQL triggers (see the migration) refuse
    UPDATE and DELETE on this table.
    """

    Action = ChangeAction

    class Result(models.TextChoices):
        OK = "ok"
        ERROR = "error"

    intent = models.OneToOneField(ApplyIntent, on_delete=models.PROTECT, related_name="change")
    source = models.ForeignKey(Source, on_delete=models.PROTECT, related_name="changes")
    rollout = models.ForeignKey(
        Rollout, on_delete=models.PROTECT, related_name="changes", null=True, blank=True
    )
    commit = models.CharField(max_length=COMMIT_LENGTH, db_index=True)
    cluster = models.CharField(max_length=253, default="default")
    namespace = models.CharField(max_length=63)
    kind = models.CharField(max_length=32, default="ConfigMap")
    name = models.CharField(max_length=253)
    action = models.CharField(max_length=16, choices=CHANGE_ACTIONS)
    before_hash = models.CharField(max_length=64, blank=True, default="")
    after_hash = models.CharField(max_length=64, blank=True, default="")
    before = ContentJSONField(null=True, blank=True)
    after = ContentJSONField(null=True, blank=True)
    diff = ContentJSONField(default=list, blank=True)
    actor = models.CharField(max_length=150)
    step_index = models.PositiveIntegerField(default=0)
    weight = models.PositiveSmallIntegerField(default=100)
    at = models.DateTimeField(default=timezone.now, db_index=True)
    result = models.CharField(max_length=8, choices=Result.choices)
    error = models.TextField(blank=True, default="")

    objects = ChangeQuerySet.as_manager()

    class Meta:
        ordering: ClassVar[list[str]] = ["-at", "-id"]
        indexes: ClassVar[list[Any]] = [
            models.Index(fields=["source", "-at"]),
            models.Index(fields=["namespace", "name"]),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.namespace}/{self.name} @ {self.commit[:12]}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            raise TypeError("the change log is append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise TypeError("the change log is append-only")

    @classmethod
    def from_intent(cls, intent: ApplyIntent, *, cluster: str, at: datetime, error: str | None) -> Change:
        """The log entry of an applied intent: what it did, as it meant to, and how it went."""
        return cls(
            intent=intent,
            cluster=cluster,
            at=at,
            result=cls.Result.ERROR if error else cls.Result.OK,
            error=error or "",
            **copied(intent, LOGGED_FROM_INTENT),
        )


class ManagedObject(models.Model):
    """The inventory: what each source applied, so prune knows where to look."""

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="managed_objects")
    namespace = models.CharField(max_length=63)
    name = models.CharField(max_length=253)
    kind = models.CharField(max_length=32, default="ConfigMap")
    commit = models.CharField(max_length=COMMIT_LENGTH)
    content_hash = models.CharField(max_length=64)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar[list[Any]] = [
            models.UniqueConstraint(fields=["kind", "namespace", "name"], name="managed_object_unique")
        ]
        ordering: ClassVar[list[str]] = ["namespace", "name"]

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def applied_by(cls, intent: ApplyIntent, *, at: datetime) -> ManagedObject:
        """The inventory entry an applied intent leaves behind."""
        fields = copied(intent, ("source_id", "namespace", "name", "kind", "commit"))
        return cls(**fields, content_hash=intent.after_hash, updated_at=at)


class WebhookDelivery(models.Model):
    """One push notification received, accepted or not, and why."""

    class Outcome(models.TextChoices):
        ACCEPTED = "accepted"
        IGNORED = "ignored"
        REJECTED = "rejected"
        DUPLICATE = "duplicate"

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="deliveries")
    delivery_id = models.CharField(max_length=100)
    provider = models.CharField(max_length=16)
    event = models.CharField(max_length=32, blank=True, default="")
    ref = models.CharField(max_length=255, blank=True, default="")
    commit = models.CharField(max_length=64, blank=True, default="")
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    reason = models.CharField(max_length=300, blank=True, default="")
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar[list[str]] = ["-received_at", "-id"]
        constraints: ClassVar[list[Any]] = [
            # A replayed delivery id is recognised and ignored; rejected attempts do not count.
            models.UniqueConstraint(
                fields=["source", "delivery_id"],
                condition=models.Q(outcome__in=["accepted", "ignored"]),
                name="delivery_once",
            )
        ]
        indexes: ClassVar[list[Any]] = [models.Index(fields=["source", "-received_at"])]

    def __str__(self) -> str:
        return f"{self.provider} delivery {self.delivery_id} for {self.source_id}: {self.outcome}"


class Notification(models.Model):
    """An outbox of CloudEvents: written with the event, delivered by a task that retries."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        GAVE_UP = "gave-up"

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="notifications")
    url = models.CharField(max_length=2000)
    event = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # When the next attempt is due. A pending row overdue by a minute lost its task (the
    # broker failed), and the sweeper enqueues it again.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # An attempt in flight holds the row until then, so two tasks never post it twice.
    lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["id"]
        indexes: ClassVar[list[Any]] = [
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(status="pending"),
                name="notification_due",
            )
        ]

    def __str__(self) -> str:
        return f"{self.event.get('type')} to {self.url}: {self.status}"


class VerifiedEmail(models.Model):
    """An email an administrator confirmed belongs to a user: the only one self-approval checks trust."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="verified_email"
    )
    email = models.EmailField(max_length=254)
    verified_by = models.CharField(max_length=150)
    verified_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.email} (verified by {self.verified_by})"
