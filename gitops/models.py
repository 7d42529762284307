"""Persistent state of the reconciler."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, TypeVar, cast
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connection, models
from django.db.models.base import ModelState
from django.utils import timezone
from django.utils.crypto import salted_hmac

from gitops.desired.content import KIND_LABEL, MANAGED_BY_VALUE, Content
from gitops.desired.policy import DEFAULT_HEALTH_TIMEOUT_SECONDS, ConsumerMode
from gitops.desired.revision import flag_set_key
from gitops.desired.scope import AdminScope
from gitops.plan import Action, PlanItem, diff_content
from gitops.plan.diff import DiffItem, DiffOp
from gitops.plan.provenance import (
    Provenance,
    held_by_others,
    live_content,
    live_provenance,
    owned_keys,
    read_as_held,
)
from gitops.plan.provenance import manifest as configmap_manifest
from gitops.plan.stamps import FLAG_SET_KIND
from gitops.redaction import redact, url_without_query
from gitops.storable import JsonbEncoder, compact_json, jsonb_text
from gitops.vocabulary import (
    AccessAuditAction,
    AuditVia,
    ChangeAction,
    ClusterAuditAction,
    FlagReach,
    ObjectsOnRemoval,
    RemovalStatus,
    SourceAuditAction,
    Waiting,
)
from gitops.windows import FreezeRule, WindowKind, WindowRule

SOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
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

    Its values can come from a cluster (``before``, a diff, a plan), and jsonb takes no U+0000:
    ``JsonbEncoder`` records one as U+FFFD (see ``gitops.storable``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("encoder", JsonbEncoder)
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> Any:
        # The encoder is the class's own, not a choice a migration records.
        name, path, args, kwargs = super().deconstruct()
        if kwargs.get("encoder") is JsonbEncoder:
            del kwargs["encoder"]
        return name, path, args, kwargs

    def get_placeholder(self, value: Any, compiler: Any, connection: Any) -> str:
        return "%s"


Row = TypeVar("Row", bound=models.Model)


class UnsavedRows(Generic[Row]):
    """Makes unsaved instances of one model for ``record.bulk.rows_insert``, as ``Model(**values)``
    would, at a tenth of its cost: thousands per pass, and Django's ``__init__`` goes through every
    field's descriptor and sends two signals per instance (no receiver may rely on them for these
    models).

    Values are given by field name (a foreign key as an instance, or by its ``_id``); a field not
    given takes its default, a callable one called for each instance. An unknown name is refused.
    """

    def __init__(self, model: type[Row]) -> None:
        self._model = model
        fields = [field for field in model._meta.concrete_fields if not field.primary_key]
        # name -> (the column's attribute, the model it refers to, that model's attribute it holds)
        self._relations: dict[str, tuple[str, type[models.Model], str]] = {
            field.name: (
                field.attname,
                cast(type[models.Model], field.related_model),
                field.target_field.attname,
            )
            for field in fields
            if isinstance(field, models.ForeignKey)
        }
        self._names = frozenset(field.attname for field in fields) | frozenset(self._relations)
        self._constant: dict[str, Any] = {model._meta.pk.attname: None}
        self._computed: list[tuple[str, Callable[[], Any]]] = []
        for field in fields:  # as ``Model.__init__`` fills a field not given
            if field.has_default() and callable(field.default):
                # A relation's own ``get_default`` turns an instance its default gives into its key.
                self._computed.append(
                    (field.attname, field.get_default if field.is_relation else field.default)
                )
            else:
                self._constant[field.attname] = field.get_default()

    def __call__(self, **values: Any) -> Row:
        unknown = values.keys() - self._names
        if unknown:
            raise TypeError(f"{self._model.__name__} has no field {sorted(unknown)[0]!r}")
        row = self._model.__new__(self._model)
        state = row._state = ModelState()
        attributes = row.__dict__
        attributes.update(self._constant)
        for attname, default in self._computed:
            attributes[attname] = default()
        for name, (attname, model, target) in self._relations.items():
            if name in values:
                related = values.pop(name)
                if related is not None and not isinstance(related, model):
                    raise ValueError(f"{self._model.__name__}.{name} must be a {model.__name__} instance")
                attributes[attname] = None if related is None else getattr(related, target)
                state.fields_cache[name] = related
        attributes.update(values)
        return row


def validate_source_name(value: str) -> None:
    # The name becomes a label value on every object the source manages.
    if len(value) > 63 or not SOURCE_NAME.match(value):
        raise DjangoValidationError(
            f"{value!r} is not a valid source name (lowercase letters, digits and '-', at most 63)"
        )


def validate_cluster_name(value: str) -> None:
    # The name is written into policies (targets[].cluster), scope globs (CLUSTER/NAMESPACE) and the log.
    if len(value) > 63 or not SOURCE_NAME.match(value):
        raise DjangoValidationError(
            f"{value!r} is not a valid cluster name (lowercase letters, digits and '-', at most 63)"
        )


class Cluster(models.Model):
    """A cluster an administrator registered. Credentials stay by reference, as for Git.

    A kubeconfig path and context (read by the workers, on their filesystem), or the
    in-cluster service account. Nothing secret is ever stored here or shown. The
    cluster ``KUBECONFIG`` names is the default cluster (``SLUICE_CLUSTER_NAME``) and
    has no row: single-cluster set-ups register nothing.
    """

    name = models.CharField(max_length=63, unique=True, validators=[validate_cluster_name])
    kubeconfig = models.CharField(
        max_length=1000,
        blank=True,
        default="",
        help_text="a kubeconfig path on the workers; never its content",
    )
    context = models.CharField(max_length=253, blank=True, default="", help_text="empty: the current context")
    in_cluster = models.BooleanField(default=False, help_text="the service account Sluice's pods run as")
    # What add-cluster was told (--allow-unverified-tls): kept, so a kubeconfig rewritten in place to skip
    # the certificate check (or to plain http) is refused when a worker builds its client again.
    allow_unverified_tls = models.BooleanField(
        default=False, help_text="may its kubeconfig reach the server without checking its certificate"
    )
    # The cluster it was registered for (``gitops.cluster.Cluster.identity``): a kubeconfig rewritten in
    # place to reach another cluster is refused when a worker builds its client again. "" until recorded.
    # A database default too: a process of the release before, during an upgrade, inserts rows without it.
    identity = models.CharField(
        max_length=64,
        blank=True,
        default="",
        db_default="",
        help_text="its kube-system namespace's uid, when registered",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar[list[str]] = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def credentials_ref(self) -> str:
        """Where the credentials live, as shown to people: a path and a context, never their content."""
        if self.in_cluster:
            return "in-cluster service account"
        return self.kubeconfig + (f" (context {self.context})" if self.context else "")

    def registered_settings(self) -> dict[str, Any]:
        """What add-cluster recorded, for the audit trail: references and choices, never a credential."""
        return {
            "kubeconfig": self.kubeconfig,
            "context": self.context,
            "in_cluster": self.in_cluster,
            "allow_unverified_tls": self.allow_unverified_tls,
            "identity": self.identity,
        }


class LiveSources(models.Manager["Source"]):
    """Sources that exist: a deleted source stays as a row (its change log and audit trail point at it),
    and nothing that reads ``Source.objects`` sees it again."""

    def get_queryset(self) -> models.QuerySet[Source]:
        return super().get_queryset().filter(deleted_at__isnull=True)


class Source(models.Model):
    # What a pass writes that can run to megabytes (a plan of 500 items and their diffs, the consumer map,
    # held drops): left out wherever only a source's name, URL or state is shown. A list of 200 rollouts
    # read the same 4 MiB plan 200 times (``related_bulk``).
    BULK_FIELDS: ClassVar[tuple[str, ...]] = ("last_plan", "consumer_map", "stamps_to_drop")

    # Unique among sources that exist (see Meta): a deleted source's name can be used again.
    name = models.CharField(max_length=63, validators=[validate_source_name])
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
    # When it was set: a mark older than schedule.SYNC_QUEUED_STALE is a lost task's, and is taken over.
    sync_queued_at = models.DateTimeField(null=True, blank=True)
    # Where rollout and revision events go, as CloudEvents (HTTP, structured mode).
    notify_urls = models.JSONField(default=list, blank=True)
    # The clusters the last validated revision targets, in policy order: a cluster is not removed under it.
    target_clusters = models.JSONField(default=list, blank=True)
    # Flux's suspend: no poll, push or timer syncs it; a sync someone asks for still runs.
    suspended = models.BooleanField(default=False, db_default=False)
    suspended_at = models.DateTimeField(null=True, blank=True)
    suspended_by = models.CharField(max_length=150, blank=True, default="", db_default="")
    # Set when a removal finished: the row stays for the change log and the audit trail.
    deleted_at = models.DateTimeField(null=True, blank=True)
    # The live cache's stamps the source's writes outdated and a worker could not drop (Redis did not
    # answer): {cluster: {namespace: [[name, content hash, resourceVersion], ...]}}. Until a pass has
    # dropped them (``cluster.apply.stamps_drop_held``), a stamp may show the content before those
    # writes as applied, so the source's plans read the cluster (``livestore.unsettle_written``).
    stamps_to_drop = models.JSONField(default=dict, blank=True, db_default={})

    # The first manager is the default one: every query of Source.objects leaves deleted sources out.
    objects = LiveSources()
    all_objects: models.Manager[Source] = models.Manager()

    class Meta:
        ordering: ClassVar[list[str]] = ["name"]
        constraints: ClassVar[list[Any]] = [
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(deleted_at__isnull=True),
                name="source_unique_live_name",
                violation_error_message="a source with this name already exists",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def related_bulk(cls, relation: str) -> tuple[str, ...]:
        """``BULK_FIELDS`` of a source reached through ``relation`` (``defer`` of a joined source)."""
        return tuple(f"{relation}__{field}" for field in cls.BULK_FIELDS)

    @property
    def automatic_sync_allowed(self) -> bool:
        """Whether polls, pushes and timers may sync this source; a sync someone asks for always may.
        ``automatic_sync_filter`` is the same rule for queries: change both together."""
        return not self.suspended and self.deleted_at is None

    @property
    def scope(self) -> AdminScope:
        """What an administrator allows this source; its repository can only narrow it.

        Validation adds the clusters that exist (``known_cluster_names``); this
        property asks the database nothing, since planning asks it per namespace.
        """
        return AdminScope.of(
            self.allowed_namespaces or (),
            self.analysis_url_prefixes or (),
            default_cluster=settings.SLUICE_CLUSTER_NAME,
        )


def known_cluster_names() -> frozenset[str]:
    """Every cluster a policy may name: the default one and the registered ones (one query)."""
    return known_clusters(Cluster.objects.values_list("name", flat=True))


def known_clusters(registered: Iterable[str]) -> frozenset[str]:
    """``known_cluster_names`` from the registered names a caller has read already."""
    return frozenset({settings.SLUICE_CLUSTER_NAME, *registered})


def automatic_sync_filter(prefix: str = "") -> models.Q:
    """``Source.automatic_sync_allowed`` as a query filter; ``prefix="source__"`` from a related model."""
    return models.Q(**{f"{prefix}suspended": False, f"{prefix}deleted_at__isnull": True})


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


def new_flag_population() -> str:
    """A rollout's seed for its flag canaries (``flag_canary``): every flag it changes splits the same
    users, and no two rollouts split the same ones."""
    return secrets.token_hex(8)


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
    # Bumped by a person's decision that rewrites the steps (a promote to 100%): a worker's move from
    # the state it read before (``state.transition``) then fails, and it reads the steps again.
    version = models.PositiveIntegerField(default=0, db_default=0)
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
    # The flag keys the rollout publishes, and where (``desired.flag_keys.flag_claims``), claimed as it
    # starts: while it is under way, another source's revision that would publish one there is rejected,
    # before this rollout's first write reaches the flag catalog.
    flag_claims = models.JSONField(default=list, blank=True, db_default=[])
    # The source's directory (``Source.path``) the rollout's content was read from. The same commit read
    # from another directory is other content: a rollout of its own (``lifecycle.rollout_choose``). NULL:
    # not known (a worker of the release before inserted the row), taken as the source's.
    path = models.CharField(max_length=1000, null=True, blank=True, default=None)  # noqa: DJ001 (unknown, not "")
    # The newest head, not the rollout's own commit, that holds its directory byte for byte (a commit
    # elsewhere in a monorepo): the rollout stands for it (``lifecycle._stands_for_head``), and a retry
    # is of the head's content. Written by the pass that finds it; "" none.
    stands_for = models.CharField(max_length=COMMIT_LENGTH, blank=True, default="", db_default="")
    promoted_by = models.CharField(max_length=150, blank=True, default="")
    abort_requested_by = models.CharField(max_length=150, blank=True, default="")
    abort_reason = models.TextField(blank=True, default="")
    # The phase a rollback Sluice decided on (a failed analysis, wave or step; a supersede) ends in,
    # saved with abort_requested_by before anything is restored: a pass that dies mid-rollback is followed
    # by one that finishes the rollback, never by one that drives the rollout on. Blank: Aborted.
    # Database defaults, here and below: a worker of the release before inserts without these columns.
    rollback_phase = models.CharField(
        max_length=16, choices=Phase.choices, blank=True, default="", db_default=""
    )
    # The steps as the rollout began, gates included: a promote to 100% cuts ``steps`` short, and a retry
    # must run the revision's own steps again (its analyses and gates), not the cut ones. Empty before 0019.
    planned_steps = models.JSONField(default=list, blank=True, db_default=[])
    # The seed every flag canary of this rollout hashes with the targeting key, so one set of users gets
    # every flag it changes. "" (rollouts from before 0023, or a worker of the release before): each flag
    # splits its own users, as that rollout began.
    flag_population = models.CharField(max_length=32, blank=True, default=new_flag_population, db_default="")
    # Clusters a rollback could not reach yet: they still hold this rollout's content and are
    # restored as soon as they answer (retried at pause_until, by the source's reconciles).
    rollback_pending_clusters = models.JSONField(default=list, blank=True)
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

    def directory_moved(self, source: Source) -> bool:
        """Whether this rollout read its content from another directory of the repository than the
        source's now (``Source.path``, as the caller read it): the same commit is then other content. Not
        known (NULL, a rollout a worker of the release before started) is taken as the same."""
        return self.path is not None and self.path != source.path

    def reload(self) -> None:
        """``refresh_from_db`` with the source and revision read in the same query: a bare refresh drops
        both, and each is then read again on first use (two more statements on every step of a pass)."""
        self.refresh_from_db(from_queryset=Rollout._base_manager.select_related("source", "revision"))

    @property
    def is_active(self) -> bool:
        return self.phase in self.ACTIVE_PHASES

    @property
    def decided_rollback_phase(self) -> Rollout.Phase:
        """The phase the rollback asked for (a person's abort, or Sluice's own decision) ends in."""
        return Rollout.Phase(self.rollback_phase) if self.rollback_phase else Rollout.Phase.ABORTED

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
        # A retry's flag canaries go first to the users the failed try reached, not to new ones.
        "flag_population",
        "flag_claims",
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


def _applied_commit(rollout: Rollout, item: PlanItem, commit: str, healed: str) -> tuple[str, PlanItem]:
    """The commit ``item`` stamps, and the item as it applies it. A heal keeps the commit the inventory
    recorded (``healed``), not the cluster's annotation; a flag set carries it inside its document too,
    rendered by the plan with the one the cluster showed: the heal stamps the inventory's there as well
    (else the two disagreed, flagd served the forged one, and the next pass healed again)."""
    if item.action is not Action.SELF_HEAL:
        return commit, item
    applied = healed or item.live_commit or commit
    if item.desired is not None and item.desired.flag_set is not None and applied != item.live_commit:
        item = dataclasses.replace(
            item, after=item.desired.rendered(commit=applied, source=rollout.source.name)
        )
    return applied, item


class ApplyIntent(models.Model):
    """What a step is about to do to one object, written before it is done.

    Bookkeeping, not history: a crash between applying and logging leaves a
    pending intent, and the next run finishes it. The change log is ``Change``.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        DONE = "done"
        FAILED = "failed"  # the cluster refused it
        DROPPED = "dropped"  # settled unapplied: what it was for no longer holds (``drop_pending``)

    # A rollout's step, or (rollout empty) a source's removal keeping or pruning what it managed.
    rollout = models.ForeignKey(
        Rollout, on_delete=models.CASCADE, related_name="intents", null=True, blank=True
    )
    removal = models.ForeignKey(
        "SourceRemoval", on_delete=models.PROTECT, related_name="intents", null=True, blank=True
    )
    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="intents")
    step_index = models.PositiveIntegerField(default=0)
    weight = models.PositiveSmallIntegerField(default=100)
    cluster = models.CharField(max_length=63)
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
    # For a delete: the uid and resourceVersion of the object the plan (a removal's listing, a rollback's
    # LIST) read as its source's; "" when none was read so. The delete is sent on the condition that the
    # object is still that one at that version, without a read before it (``Cluster.delete_configmap``).
    live_uid = models.CharField(max_length=64, blank=True, default="", db_default="")
    live_version = models.CharField(max_length=64, blank=True, default="", db_default="")
    origin = models.CharField(max_length=1000, blank=True, default="")
    actor = models.CharField(max_length=150, default="sluice")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Not a column: ``manifest`` as compact JSON, when ``for_item`` encoded it (None once read back).
    manifest_json: str | None = None
    # Not a column: the source's name, for the label check of a delete or a release (``apply._name_holders``).
    holder: str = ""

    class Meta:
        ordering: ClassVar[list[str]] = ["id"]
        indexes: ClassVar[list[models.Index]] = [
            # Every pass asks for its source's pending intents, among all the done ones it ever wrote.
            models.Index(
                fields=["source"], condition=models.Q(status="pending"), name="gitops_intent_pending_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.cluster}/{self.namespace}/{self.name} ({self.status})"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.cluster, self.namespace, self.name)

    @classmethod
    def drop_pending(cls, intents: models.QuerySet[ApplyIntent]) -> int:
        """Settles the pending ones among ``intents`` without applying them: their cluster was restored
        by their rollout's rollback, the rollback there was waived, the cluster was forgotten, or a later
        removal decides. Never logged: a crash may have applied one first, and nothing here can tell."""
        return intents.filter(status=cls.Status.PENDING).update(status=cls.Status.DROPPED)

    @classmethod
    def for_item(
        cls,
        rollout: Rollout,
        item: PlanItem,
        *,
        commit: str,
        actor: str,
        step_index: int,
        weight: int,
        healed_commit: str = "",
    ) -> ApplyIntent:
        """What applying one plan item at a step will do, before it is done. ``healed_commit``: for a
        self-heal, the commit the source's inventory says it applied there."""
        # Self-heal restores what was applied, so the object keeps the commit it came from: the one the
        # inventory recorded, not the cluster's annotation, which whoever drifted the object may have
        # rewritten (a well-formed forged commit went into the log, the stamp and the inventory).
        applied_commit, item = _applied_commit(rollout, item, commit, healed_commit)
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
        intent = _unsaved_intents()(
            rollout=rollout,
            source_id=rollout.source_id,
            step_index=step_index,
            weight=weight,
            cluster=item.cluster,
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
            # An added or removed key's unified text is derived when shown (``readable_diff``).
            diff=[change.as_dict(stored=True) for change in item.diff],
            force=item.force,
            live_uid=item.live_uid,
            live_version=item.live_version,
            origin=item.desired.origin if item.desired else "",
            actor=actor,
        )
        if manifest is not None:
            # Encoded once: the intent's row takes this text, and so does the apply's request body.
            intent.manifest_json = compact_json(manifest)
        return intent

    def written_kind(self) -> str:
        """The kind label of the object this intent writes (its manifest's), or for a prune (no manifest)
        of what it deleted: a flag set when that held a flag set's document. A rollback restores it, and
        a flag canary orders moves by it (``rollback._writes_flag_set``)."""
        if self.manifest is not None:
            labels = (self.manifest.get("metadata") or {}).get("labels") or {}
            return str(labels.get(KIND_LABEL, "configmap"))
        held = (self.before or {}).get("data") or {}
        return FLAG_SET_KIND if flag_set_key(self.name) in held else "configmap"

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
        recreate = _recreated(live, baseline)
        foreign = _foreign_keys(live, baseline, first) if not recreate else {}
        if baseline is not None and foreign:
            # The object as the restore leaves it: another manager's keys at their value of now.
            baseline = _with_values(baseline, foreign)
        if baseline is not None and live is not None and _holds(live, baseline, first):
            return None
        current = live_content(live) if live is not None else None
        manifest = None
        if baseline is not None:
            provenance = Provenance(
                rollout.source.name,
                first.before_commit,
                first.before_content_hash,
                first.origin,
                first.written_kind(),
            )
            # Another manager's keys are left out of the apply: forced, it would take them over.
            applied = _with_values(baseline, {section: {} for section in foreign}, drop=foreign)
            manifest = configmap_manifest(first.namespace, first.name, applied, provenance)
        return cls(
            rollout=rollout,
            source_id=rollout.source_id,
            step_index=rollout.step_index,
            weight=rollout.weight,
            cluster=first.cluster,
            namespace=first.namespace,
            name=first.name,
            action=ChangeAction.ROLLBACK,
            commit=first.before_commit or rollout.revision.commit,
            manifest=manifest,
            before=current.as_dict() if current is not None else None,
            after=baseline.as_dict() if baseline is not None else None,
            before_hash=current.hash if current is not None else "",
            after_hash=baseline.hash if baseline is not None else "",
            diff=[change.as_dict(stored=True) for change in _restore_diff(live, current, baseline)],
            force=True,
            recreate=recreate,
            origin=first.origin,
            actor=actor,
            **_delete_condition(rollout, live, baseline),
        )


def _delete_condition(
    rollout: Rollout, live: Mapping[str, Any] | None, baseline: Content | None
) -> dict[str, str]:
    """A restore that deletes a created object goes out on the condition of the rollback's read, where
    that read shows it as the source's (as a prune does): no read before it, and any write since fails
    it, after which it is read and its labels checked. Before, every such delete read the object first,
    one request at a time on the apply pool's threads."""
    if baseline is not None or live is None or live_provenance(live)[0] != rollout.source.name:
        return {}
    return read_as_held(live)


def _recreated(live: Mapping[str, Any] | None, baseline: Content | None) -> bool:
    """Whether restoring ``baseline`` over an immutable ``live`` object must delete and create it: only
    when its data or its immutability would change. Labels and annotations change in place, as the
    forward plan changes them; a recreate leaves pods starting meanwhile without the ConfigMap."""
    if live is None or not live.get("immutable") or baseline is None:
        return False
    return (
        dict(live.get("data") or {}) != dict(baseline.data)
        or dict(live.get("binaryData") or {}) != dict(baseline.binary_data)
        or baseline.immutable is not True
    )


def _foreign_keys(
    live: Mapping[str, Any] | None, baseline: Content | None, first: ApplyIntent
) -> dict[str, dict[str, str]]:
    """Keys of data and binaryData the restore must leave to another field manager, with their live
    values: held by another manager now and not by Sluice, and not among the keys the rollout wrote
    (those are Sluice's to put back, whoever edited them since). A key an injector rotated during the
    rollout was forced back to its stale value, and Sluice became its only owner, so the next commit's
    apply deleted it."""
    if live is None or baseline is None:
        return {}
    others, ours = held_by_others(live), owned_keys(live, MANAGED_BY_VALUE)
    written = first.after or {}
    values = {"data": live.get("data") or {}, "binaryData": live.get("binaryData") or {}}
    before = {"data": baseline.data, "binaryData": baseline.binary_data}
    foreign = {
        section: {
            key: str(values[section][key])
            for key in before[section]
            if key in others[section]
            and key not in ours[section]
            and key not in (written.get(section) or {})
            and key in values[section]
        }
        for section in ("data", "binaryData")
    }
    return {section: keys for section, keys in foreign.items() if keys}


def _with_values(
    content: Content, values: Mapping[str, Mapping[str, str]], *, drop: Mapping[str, Any] = {}
) -> Content:
    """``content`` with data and binaryData keys set to ``values`` and those in ``drop`` left out."""
    sections = {"data": dict(content.data), "binaryData": dict(content.binary_data)}
    for section, keys in sections.items():
        for key in drop.get(section) or {}:
            keys.pop(key, None)
        keys.update(values.get(section) or {})
    return dataclasses.replace(content, data=sections["data"], binary_data=sections["binaryData"])


def _restore_diff(
    live: Mapping[str, Any] | None, current: Content | None, baseline: Content | None
) -> list[DiffItem]:
    """What a restore changes. A key someone else added meanwhile stays (the apply leaves another
    manager's keys, as a self-heal would not): it was logged as removed. A deletion takes them all."""
    changes = diff_content(current, baseline)
    if live is None or baseline is None:
        return changes
    ours = owned_keys(live, MANAGED_BY_VALUE)
    return [
        change
        for change in changes
        if not (
            change.op is DiffOp.REMOVE
            and change.field in ("data", "binaryData")
            and change.key not in ours[change.field]
        )
    ]


def _holds(live: Mapping[str, Any], baseline: Content, first: ApplyIntent) -> bool:
    _, live_commit, live_hash = live_provenance(live)
    restored = live_content(live, desired_labels=baseline.labels, desired_annotations=baseline.annotations)
    # Provenance that is not a commit or a hash reads as absent, and was recorded as "".
    return (
        restored == baseline
        and (live_commit or "") == first.before_commit
        and (live_hash or "") == first.before_content_hash
    )


# What a change-log entry keeps of the intent it records.
LOGGED_FROM_INTENT = (
    "source_id",
    "rollout_id",
    "commit",
    "cluster",
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


def _column(model: type[models.Model], name: str) -> str:
    """The database column of a model's field (``name`` may be a foreign key's ``..._id``)."""
    column = getattr(model._meta.get_field(name), "column", None)
    if not isinstance(column, str):
        raise TypeError(f"{model.__name__}.{name} has no column")
    return column


@functools.cache
def _unsaved_intents() -> UnsavedRows[ApplyIntent]:
    """Built on first use: the fields' defaults are asked once every model is loaded."""
    return UnsavedRows(ApplyIntent)


class ChangeQuerySet(models.QuerySet["Change"]):
    def update(self, **kwargs: Any) -> int:
        raise TypeError("the change log is append-only")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise TypeError("the change log is append-only")


class Change(models.Model):
    """One change applied to a cluster: append-only, after netbox's ObjectChange.

    ``before`` and ``after`` hold the full content, so a rollback can restore
    exactly what was there. PostgreSQL triggers (see the migration) refuse
    UPDATE and DELETE on this table; others keep ``RolloutObjectCount`` as rows
    are inserted or archived.
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
            # The change log filtered by source, newest first (its pages go by id).
            models.Index(fields=["source", "-id"], name="gitops_change_source_id_desc"),
            # A rollout's page: each object's latest change, read in index order, not sorted.
            models.Index(
                fields=["rollout", "cluster", "namespace", "kind", "name", "-id"], name="gitops_change_latest"
            ),
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
    def log_intents(cls, intent_ids: Sequence[int], errors: Mapping[int, str], *, at: datetime) -> None:
        """The log entries of applied intents: what each did, in which cluster, and how it went; and
        each intent marked done, or failed.

        ``errors`` says why the cluster refused an intent (by id); the others went well. One
        statement, so all of it or nothing, and no transaction to open and commit; entries in the
        order of ``intent_ids``; an intent already logged is skipped. Each entry's fields are copied
        inside PostgreSQL from its intent's row (as it was before this statement marked it), so the
        content (before, after, diff) is neither built into models nor encoded as JSON a second time.
        """
        quote = connection.ops.quote_name
        change_columns = [_column(cls, name) for name in LOGGED_FROM_INTENT]
        intent_columns = [_column(ApplyIntent, name) for name in LOGGED_FROM_INTENT]
        into = ", ".join(quote(column) for column in ["intent_id", *change_columns, "at", "result", "error"])
        copied_columns = ", ".join(f"i.{quote(column)}" for column in intent_columns)
        intents = quote(ApplyIntent._meta.db_table)
        # Only the models' own table and column names, quoted, are formatted in; values are parameters.
        sql = (
            f"WITH marked AS (UPDATE {intents} m "  # noqa: S608
            "SET status = CASE WHEN f.value IS NULL THEN %s ELSE %s END "
            f"FROM {INTENT_IDS} AS e(intent_id) LEFT JOIN jsonb_each_text(%s::jsonb) f "
            "ON f.key = e.intent_id::text WHERE m.id = e.intent_id) "
            f"INSERT INTO {quote(cls._meta.db_table)} ({into}) "
            f"SELECT i.id, {copied_columns}, %s, CASE WHEN f.value IS NULL THEN %s ELSE %s END, "
            "COALESCE(f.value, '') "
            f"FROM {INTENT_IDS} WITH ORDINALITY AS e(intent_id, position) "
            f"JOIN {quote(ApplyIntent._meta.db_table)} i ON i.id = e.intent_id "
            "LEFT JOIN jsonb_each_text(%s::jsonb) f ON f.key = i.id::text "
            "ORDER BY e.position ON CONFLICT (intent_id) DO NOTHING"
        )
        # A refusal quotes the cluster's words (``cluster_text`` cleans them): jsonb takes no U+0000. An
        # admission policy's message may quote a URL or a token; the log is read by every viewer.
        refused = jsonb_text(json.dumps({str(pk): redact(error) for pk, error in errors.items()}))
        results = [cls.Result.OK.value, cls.Result.ERROR.value]
        statuses = [ApplyIntent.Status.DONE.value, ApplyIntent.Status.FAILED.value]
        ids = id_list(intent_ids)
        with connection.cursor() as cursor:
            cursor.execute(sql, [*statuses, ids, refused, at, *results, ids, refused])


# Intent ids arrive as one text parameter: a driver that binds on the client quotes one string
# instead of adapting an array element by element.
INTENT_IDS = "unnest(string_to_array(%s, ',')::bigint[])"


def id_list(ids: Iterable[int]) -> str:
    """Ids as the one text parameter ``INTENT_IDS`` reads: "12,13,14"."""
    return ",".join(str(int(pk)) for pk in ids)


class RolloutObjectCount(models.Model):
    """How many objects (cluster, namespace, kind, name) a rollout's change-log entries name: the
    total its page and the API report, read in one lookup. Counting them on every view read each
    entry's heap page until a vacuum had marked it visible: 140 to 400 ms for 20,000 entries.

    Only the database writes it (migration 0013): a statement trigger on the change log adds the
    objects each INSERT names for the first time in their rollout, and another counts the rollouts an
    archival touched again, whoever writes the rows (a worker, one of the previous release during an
    upgrade, a script). A rollout without a row has changed nothing. Two writers
    logging the same object's first change in one rollout at once would count it twice; one writer
    per source (the reconcile lock) rules that out.
    """

    rollout = models.OneToOneField(
        Rollout, on_delete=models.CASCADE, primary_key=True, related_name="object_count"
    )
    total = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"rollout {self.rollout_id}: {self.total} objects"


class InventoryVersion(models.Model):
    """Bumped by the database whenever a source's inventory gains, loses or moves an object (statement
    triggers on ``gitops_managedobject``, migration 0014), so a worker may keep the inventory's keys
    between passes and read one number instead of every row. Written only by those triggers: no
    model save can set it back to a value a worker already saw."""

    source_id = models.BigIntegerField(primary_key=True)
    version = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"source {self.source_id}: inventory version {self.version}"


class PassClaim(models.Model):
    """Which pass holds a source's reconcile lock, and when it last showed that its session (and with
    it the lock) was still alive (``locks.PassFence``). A pass that lost its session mid-write leaves
    its claim behind: the next one waits until it is ``SLUICE_PASS_TAKEOVER_SECONDS`` old, by when the
    old pass has stopped writing, instead of writing to the same clusters beside it."""

    source_id = models.BigIntegerField(primary_key=True)
    holder = models.CharField(max_length=32, blank=True, default="")  # "" once the pass ended cleanly
    alive_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"source {self.source_id}: held by {self.holder or 'nobody'} at {self.alive_at}"


class ManagedObject(models.Model):
    """The inventory: what each source applied, so prune knows where to look."""

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="managed_objects")
    cluster = models.CharField(max_length=63)
    namespace = models.CharField(max_length=63)
    name = models.CharField(max_length=253)
    kind = models.CharField(max_length=32, default="ConfigMap")
    commit = models.CharField(max_length=COMMIT_LENGTH)
    content_hash = models.CharField(max_length=64)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar[list[Any]] = [
            models.UniqueConstraint(
                fields=["cluster", "kind", "namespace", "name"], name="managed_object_unique_per_cluster"
            )
        ]
        indexes: ClassVar[list[Any]] = [models.Index(fields=["source", "cluster"])]
        ordering: ClassVar[list[str]] = ["cluster", "namespace", "name"]

    def __str__(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name}"

    @classmethod
    def record_applied(cls, intent_ids: Sequence[int], *, at: datetime) -> None:
        """Upserts the inventory entry each stored, applied intent leaves behind: its object, source,
        commit and content hash. One query; the entries are copied inside PostgreSQL from the
        intents' rows. Of two intents for one object, the later wins."""
        quote = connection.ops.quote_name
        copied_names = ("source_id", "cluster", "namespace", "name", "kind", "commit")
        into = [_column(cls, name) for name in copied_names]
        selected = ", ".join(f"i.{quote(_column(ApplyIntent, name))}" for name in copied_names)
        key = ", ".join(f"i.{quote(column)}" for column in ("cluster", "kind", "namespace", "name"))
        updated = [_column(cls, name) for name in ("source_id", "commit", "content_hash", "updated_at")]
        # Only the models' own table and column names, quoted, are formatted in; values are parameters.
        sql = (
            f"INSERT INTO {quote(cls._meta.db_table)} "  # noqa: S608
            f"({', '.join(quote(column) for column in [*into, 'content_hash', 'updated_at'])}) "
            f"SELECT DISTINCT ON ({key}) {selected}, i.{quote(_column(ApplyIntent, 'after_hash'))}, %s "
            f"FROM {INTENT_IDS} AS e(intent_id) "
            f"JOIN {quote(ApplyIntent._meta.db_table)} i ON i.id = e.intent_id "
            f"ORDER BY {key}, i.id DESC "
            "ON CONFLICT (cluster, kind, namespace, name) DO UPDATE SET "
            + ", ".join(f"{quote(column)} = EXCLUDED.{quote(column)}" for column in updated)
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [at, id_list(intent_ids)])


class WebhookDelivery(models.Model):
    """One push notification received, accepted or not, and why."""

    class Outcome(models.TextChoices):
        ACCEPTED = "accepted"
        IGNORED = "ignored"
        REJECTED = "rejected"
        DUPLICATE = "duplicate"
        # Verified and wanted, but the queue refused its sync: it does not count as received, so the
        # Git host's redelivery is accepted rather than answered as a duplicate.
        UNQUEUED = "unqueued"

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="deliveries")
    delivery_id = models.CharField(max_length=100)
    provider = models.CharField(max_length=16)
    event = models.CharField(max_length=32, blank=True, default="")
    ref = models.CharField(max_length=255, blank=True, default="")
    commit = models.CharField(max_length=64, blank=True, default="")
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    reason = models.CharField(max_length=300, blank=True, default="")
    received_at = models.DateTimeField(default=timezone.now)
    # SHA-256 of a verified push's or ping's body ("" for anything else): a signature covers the body,
    # never the delivery id or event headers, so a captured body sent again under new ids is told by this.
    body_digest = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering: ClassVar[list[str]] = ["-received_at", "-id"]
        constraints: ClassVar[list[Any]] = [
            # A replayed delivery id is recognised and ignored; rejected and unqueued attempts do not
            # count (the Git host's redelivery of an unqueued push is accepted).
            models.UniqueConstraint(
                fields=["source", "delivery_id"],
                condition=models.Q(outcome__in=["accepted", "ignored"]),
                name="delivery_once",
            ),
            # And a replayed body under another id, the same way (``receive._accept``).
            models.UniqueConstraint(
                fields=["source", "body_digest"],
                condition=models.Q(outcome__in=["accepted", "ignored"]) & ~models.Q(body_digest=""),
                name="delivery_body_once",
            ),
        ]
        indexes: ClassVar[list[Any]] = [
            models.Index(fields=["source", "-received_at"]),
            # The source page's verified deliveries, read past however many rejected ones anyone sent.
            models.Index(
                fields=["source", "-received_at"],
                condition=~models.Q(outcome="rejected"),
                name="delivery_verified_recent",
            ),
        ]

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
        return f"{self.event.get('type')} to {masked_url(self.url)}: {self.status}"


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


# -- freezes and sync windows (gitops.windows decides; these store what administrators set) ------


class Freeze(models.Model):
    """No automatic change goes out for a source (or every source, ``source`` null) until ``until``.

    Lifting one keeps its row (who lifted it, when): the rows are the freezes' audit trail.
    """

    source = models.ForeignKey(
        Source, on_delete=models.CASCADE, related_name="freezes", null=True, blank=True
    )
    until = models.DateTimeField(db_index=True)
    reason = models.TextField()
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(default=timezone.now)
    lifted_by = models.CharField(max_length=150, blank=True, default="")
    lifted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["-created_at", "-id"]
        indexes: ClassVar[list[Any]] = [
            models.Index(fields=["until"], condition=models.Q(lifted_at__isnull=True), name="freeze_in_force")
        ]
        permissions = (("override_freeze", "Can promote a rollout through a freeze or a closed sync window"),)

    def __str__(self) -> str:
        return f"freeze of {self.source.name if self.source else 'every source'} until {self.until}"

    def as_rule(self) -> FreezeRule:
        return FreezeRule(
            until=self.until,
            reason=self.reason,
            source=self.source.name if self.source else None,
            by=self.created_by,
        )


class SyncWindow(models.Model):
    """A recurring window, as Argo CD's: ``kind`` for matching sources, from each cron firing for a duration.

    Removing one keeps its row (who removed it, when), for the audit trail.
    """

    kind = models.CharField(max_length=8, choices=[(kind.value, kind.value) for kind in WindowKind])
    schedule = models.CharField(max_length=100, help_text="cron: minute hour day-of-month month day-of-week")
    duration = models.DurationField()
    time_zone = models.CharField(max_length=64, default="UTC")
    sources = models.JSONField(default=list, help_text='source names or globs; ["*"] for every source')
    manual_sync = models.BooleanField(default=False, help_text="a person's sync may go out while it closes")
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(default=timezone.now)
    removed_by = models.CharField(max_length=150, blank=True, default="")
    removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["id"]

    def __str__(self) -> str:
        return self.as_rule().describe()

    def as_rule(self) -> WindowRule:
        return WindowRule(
            kind=WindowKind(self.kind),
            schedule=self.schedule,
            duration=self.duration,
            sources=tuple(self.sources or ()),
            manual_sync=self.manual_sync,
            time_zone=self.time_zone,
            id=self.pk,
        )


class PublishedFlag(models.Model):
    """One flag a source publishes, as the revision it rolls out defines it: what the Flags page lists.

    Written by the worker after each step (``gitops.rollout.flag_catalog``), so pages never
    read the cluster or the change log to show flags. ``changed_commit`` and ``changed_at``
    come from the change-log entry that first published this definition.
    """

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="published_flags")
    cluster = models.CharField(max_length=253, default="default")
    namespace = models.CharField(max_length=63)
    flag_set = models.CharField(max_length=253, help_text="the ConfigMap the flag set is published as")
    # Flag keys are any one-line text a repository chooses: unique by hash, never indexed whole.
    key = models.TextField()
    key_hash = models.CharField(max_length=32)
    state = models.CharField(max_length=8)
    variants = models.CharField(max_length=300, blank=True, default="")
    variant_count = models.PositiveIntegerField(default=0)
    default_variant = models.CharField(max_length=40, blank=True, default="")
    targeting = models.CharField(max_length=200, default="none")
    serves_one_variant = models.BooleanField(default=False)
    definition_hash = models.CharField(max_length=32)
    # Git no longer has it; those on the old side of its rollout still get it until 100%.
    removed = models.BooleanField(default=False)
    # The rollout that brought (or brings) this definition; its phase and weight give the share.
    rollout = models.ForeignKey(
        Rollout, on_delete=models.SET_NULL, null=True, blank=True, related_name="published_flags"
    )
    # A rollout that changes this flag for every user at once at 100% (its variants change type, and
    # flagd gives a flag one type): until then the row is the definition everyone keeps, and the page
    # says "changes at 100%". Kept once the flag changed, naming the rollout that changed it so.
    held_by = models.ForeignKey(Rollout, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # Who has this definition (or its removal) while ``rollout`` runs: its share of users, everyone (a
    # change the canary does not split), or nobody until 100 (a flag moving between flag sets).
    reach = models.CharField(
        max_length=8, choices=[(r.value, r.value) for r in FlagReach], default=FlagReach.SPLIT
    )
    changed_commit = models.CharField(max_length=COMMIT_LENGTH, blank=True, default="")
    changed_at = models.DateTimeField(null=True, blank=True)
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar[list[Any]] = [
            models.UniqueConstraint(
                fields=["source", "cluster", "namespace", "flag_set", "key_hash"],
                name="published_flag_unique",
            )
        ]
        indexes: ClassVar[list[Any]] = [
            # Counting stale flags reads this index alone, never the table.
            models.Index(fields=["removed", "serves_one_variant", "changed_at"], name="published_flag_stale"),
            # The cluster filter's choices are read from it one distinct value at a time.
            models.Index(fields=["cluster"], name="published_flag_cluster"),
            # Every pass of a revision with flag sets asks which of its keys other sources publish
            # (``selectors.flag_keys_published_by_others``): probed by key, not a scan of every source's.
            models.Index(fields=["namespace", "key_hash"], name="published_flag_key"),
        ]

    def __str__(self) -> str:
        return f"{self.namespace}/{self.flag_set}: {self.key}"


# What an administrator sets on a source, as the audit trail records it (never a secret: credentials are
# a reference, and the webhook secret is not among them).
ADMIN_SETTINGS = (
    "url",
    "branch",
    "path",
    "poll_interval_seconds",
    "credentials_ref",
    "allowed_namespaces",
    "analysis_url_prefixes",
    "required_approvals",
    "commit_url_template",
    "notify_urls",
    "suspended",
)


def admin_settings(source: Source) -> dict[str, Any]:
    """A source's administrator-set fields as plain JSON values, for the audit trail and the API."""
    return {
        "url": url_without_query(source.url),
        "branch": source.branch,
        "path": source.path,
        "poll_interval_seconds": int(source.poll_interval.total_seconds()),
        "credentials_ref": source.credentials_ref,
        "allowed_namespaces": list(source.allowed_namespaces or []),
        "analysis_url_prefixes": list(source.analysis_url_prefixes or []),
        "required_approvals": source.required_approvals,
        "commit_url_template": source.commit_url_template,
        "notify_urls": [masked_url(url) for url in source.notify_urls or []],
        "suspended": source.suspended,
    }


NOTIFY_URL_FINGERPRINT = "sluice.notify-url-fingerprint"


_SHOWN_HOST = re.compile(r"[a-z0-9._-]{1,253}|[0-9a-f:.]{2,45}")
_SHOWN_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,15}")


def masked_url(url: str, *, secret: str | None = None) -> str:
    """A URL that may carry a token in its path (a chat webhook) as the audit trail and the API show it:
    its scheme and host, and a fingerprint that tells one URL from another. The fingerprint is keyed
    with the secret key: a plain hash, shown to every viewer, let them try guesses of a short token (an
    ntfy topic) offline until one matched."""
    # The host as a URL parser reads it, not what comes before the first "/": "https://host?token=…",
    # "https://host;…" and "https://host\\…" showed their token whole.
    try:
        parts = urlsplit(url)
        host, scheme, port = parts.hostname or "", parts.scheme, parts.port
    except ValueError:  # a port that is not a number, a bracket left open
        host, scheme, port = "", url.partition("://")[0].lower(), None
    if _SHOWN_HOST.fullmatch(host):
        host = (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    else:  # "host;token", "host\\token": no host a resolver would take, shown as none
        host = "?"
    scheme = scheme if _SHOWN_SCHEME.fullmatch(scheme) else "?"
    fingerprint = salted_hmac(NOTIFY_URL_FINGERPRINT, url, secret=secret, algorithm="sha256").hexdigest()[:12]
    return f"{scheme}://{host}/… #{fingerprint}"


class AppendOnlyQuerySet(models.QuerySet[Any]):
    def update(self, **kwargs: Any) -> int:
        raise TypeError(f"{self.model.__name__} is append-only")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise TypeError(f"{self.model.__name__} is append-only")


class AuditTrail(models.Model):
    """What every audit trail holds, and its rule: append-only. The model refuses to change or delete a
    row; a PostgreSQL trigger (in each trail's migration) refuses UPDATE and DELETE for every client."""

    actor = models.CharField(max_length=150)
    via = models.CharField(max_length=16, choices=[(v.value, v.value) for v in AuditVia])
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    message = models.TextField(blank=True, default="")
    at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True
        ordering: ClassVar[list[str]] = ["-at", "-id"]

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            raise TypeError("the audit trail is append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise TypeError("the audit trail is append-only")


class SourceAudit(AuditTrail):
    """One administrator's change to a source: append-only, after netbox's ObjectChange.

    ``before`` and ``after`` hold the administrator-set fields (``ADMIN_SETTINGS``);
    ``changed`` names those that differ. A PostgreSQL trigger (see the migration)
    refuses UPDATE and DELETE, as it does for the change log.
    """

    Action = SourceAuditAction

    source = models.ForeignKey(Source, on_delete=models.PROTECT, related_name="audit")
    source_name = models.CharField(max_length=63)
    action = models.CharField(max_length=16, choices=[(a.value, a.value) for a in SourceAuditAction])
    changed = models.JSONField(default=list, blank=True)

    class Meta(AuditTrail.Meta):
        indexes: ClassVar[list[Any]] = [models.Index(fields=["source", "-at"])]

    def __str__(self) -> str:
        return f"{self.action} {self.source_name} by {self.actor}"


class ClusterAudit(AuditTrail):
    """One administrator's change to the cluster registry: append-only, like the sources' audit trail.

    No key to the cluster's row: removing or forgetting a cluster deletes it, and its
    trail stays. ``before`` and ``after`` hold ``Cluster.registered_settings``. A
    PostgreSQL trigger (see the migration) refuses UPDATE and DELETE.
    """

    Action = ClusterAuditAction

    cluster = models.CharField(max_length=63)
    action = models.CharField(max_length=16, choices=[(a.value, a.value) for a in ClusterAuditAction])

    class Meta(AuditTrail.Meta):
        indexes: ClassVar[list[Any]] = [models.Index(fields=["cluster", "-at"])]

    def __str__(self) -> str:
        return f"{self.action} {self.cluster} by {self.actor}"


class AccessAudit(AuditTrail):
    """One administrator's change to a person's access: the role granted (the others taken away), or an
    email verified for the self-approval check. Append-only; a PostgreSQL trigger refuses UPDATE and
    DELETE. Keyed by username, not the user's row: the trail outlives the account."""

    Action = AccessAuditAction

    username = models.CharField(max_length=150)
    action = models.CharField(max_length=16, choices=[(a.value, a.value) for a in AccessAuditAction])

    class Meta(AuditTrail.Meta):
        indexes: ClassVar[list[Any]] = [models.Index(fields=["username", "-at"])]

    def __str__(self) -> str:
        return f"{self.action} {self.username} by {self.actor}"


class SourceRemoval(models.Model):
    """Deleting a source, as a tracked operation: its objects kept or pruned one by one, then the source."""

    Status = RemovalStatus
    ACTIVE_STATUSES: ClassVar[tuple[str, ...]] = (RemovalStatus.QUEUED, RemovalStatus.RUNNING)

    source = models.ForeignKey(Source, on_delete=models.PROTECT, related_name="removals")
    source_name = models.CharField(max_length=63)
    mode = models.CharField(max_length=8, choices=[(m.value, m.value) for m in ObjectsOnRemoval])
    status = models.CharField(
        max_length=8,
        choices=[(s.value, s.value) for s in RemovalStatus],
        default=RemovalStatus.QUEUED,
        db_index=True,
    )
    requested_by = models.CharField(max_length=150)
    via = models.CharField(max_length=16, choices=[(v.value, v.value) for v in AuditVia])
    requested_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When a task last took the removal up, or beat's sweep sent one again: an active removal no task has
    # taken up for a while lost its task (``polling.removals_claim_stale``) and is sent again.
    attempted_at = models.DateTimeField(default=timezone.now)
    # Objects the source managed when the removal ran, and how each went.
    objects_total = models.PositiveIntegerField(default=0)
    objects_done = models.PositiveIntegerField(default=0)
    objects_failed = models.PositiveIntegerField(default=0)
    message = models.TextField(blank=True, default="")

    class Meta:
        ordering: ClassVar[list[str]] = ["-id"]
        constraints: ClassVar[list[Any]] = [
            # One removal at a time per source.
            models.UniqueConstraint(
                fields=["source"],
                condition=models.Q(status__in=["queued", "running"]),
                name="one_active_removal_per_source",
            )
        ]

    def __str__(self) -> str:
        return f"removal {self.pk} of {self.source_name} ({self.mode}): {self.status}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def objects_left_alone(self) -> int:
        """Objects neither kept nor pruned nor failed: gone, taken over, or outside the source's scope."""
        return 0 if self.is_active else max(0, self.objects_total - self.objects_done - self.objects_failed)
