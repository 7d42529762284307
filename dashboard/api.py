"""The JSON API (django-ninja), mounted at /api/.

Every endpoint needs a caller: an API token (``Authorization: Bearer sluice_…``,
see ``python manage.py api-token``) or a logged-in dashboard session. Session
requests that change something must carry Django's CSRF token; token requests
need none (nothing a browser sends by itself authenticates them).

Callers have the permissions of their user's role (Django groups, see
``gitops.roles``): reading needs the ``view_*`` permissions of the viewer role;
promote, abort and retry need ``gitops.approve_rollout``; a sync needs that or
the admin's ``gitops.change_source``; creating, changing, suspending, resuming
and deleting a source need the admin's ``add_source``, ``change_source`` and
``delete_source``. The use cases in ``gitops`` check and
record who acted; this module only maps HTTP onto them.

The OpenAPI document (/api/openapi.json) and its page (/api/docs) need a caller
too: they hold no secret, but everything they describe needs one, so nobody
who may use the API is kept from them, and they advertise nothing to others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import wraps
from typing import Annotated, Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied
from django.db import transaction
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja import Field, NinjaAPI, Path, Query, Schema, Status
from ninja.errors import AuthenticationError, HttpError
from ninja.security.apikey import APIKeyCookie
from ninja.security.http import HttpBearer
from pydantic import AliasChoices, ConfigDict, field_validator

from dashboard.models import ApiToken
from gitops import cluster_admin, schedule, selectors, source_admin
from gitops.consumers.workloads import KINDS as WORKLOAD_KINDS
from gitops.consumers.workloads import Health
from gitops.desired.errors import ValidationError as RevisionError
from gitops.desired.policy import ConsumerMode
from gitops.errors import PermanentError, TemporaryError
from gitops.fetch.refs import ACCEPTED_FORMS, MAX_REVISION_LENGTH, InvalidRevision, parse_revision
from gitops.models import ManagedObject, Revision, Rollout, Source, SourceRemoval, masked_url
from gitops.plan import drift_count
from gitops.record.audit import Actor
from gitops.redaction import redact, url_without_query
from gitops.rollout import decisions
from gitops.source_admin import SourceSettingsConflict, SourceSettingsError
from gitops.vocabulary import (
    AuditVia,
    ChangeAction,
    ObjectsOnRemoval,
    PreviewOutcome,
    RemovalStatus,
    Staleness,
    StaleReason,
)

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_OFFSET = 1_000_000_000
MAX_ID = 2**63 - 1  # PostgreSQL bigint

APPROVE = "gitops.approve_rollout"
ADD_SOURCE = "gitops.add_source"
CHANGE_SOURCE = "gitops.change_source"
DELETE_SOURCE = "gitops.delete_source"

# Patterns keep what reaches the database to what can exist (no NUL bytes, no out-of-range ids).
SOURCE_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
NAMESPACE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
OBJECT_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
COMMIT_PREFIX = r"^[0-9a-fA-F]{1,64}$"
NO_NUL = r"^[^\u0000]*$"


# -- authentication ---------------------------------------------------------------------


class TokenAuth(HttpBearer):
    """``Authorization: Bearer <token>``; a token that is presented and not valid is a 401 at once."""

    openapi_bearerFormat = "sluice API token"

    def __call__(self, request: HttpRequest) -> User | None:
        # Overridden so that nothing (ninja logs a malformed header when DEBUG is on) echoes the token.
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.authenticate(request, token.strip())

    def authenticate(self, request: HttpRequest, token: str) -> User | None:
        row = ApiToken.objects.authenticate(token)
        if row is None:
            raise AuthenticationError(message="invalid, expired or revoked API token")
        return row.user


class SessionAuth(APIKeyCookie):
    """The dashboard's login session. Checks CSRF, but only when the session authenticates someone:
    an anonymous request has nothing a forged request could borrow, and gets a 401, not a 403."""

    param_name = settings.SESSION_COOKIE_NAME

    def __init__(self) -> None:
        super().__init__(csrf=True)

    def _get_key(self, request: HttpRequest) -> str | None:
        if not request.user.is_authenticated:
            return None
        return super()._get_key(request)  # raises a 403 when the CSRF check fails

    def authenticate(self, request: HttpRequest, key: str | None) -> User | None:
        user = request.user
        return user if isinstance(user, User) and user.is_authenticated else None


def docs_access(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The OpenAPI document and its page: for callers only (a session or a token)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or ApiToken.objects.authenticate(token.strip()) is None:
                if "text/html" in request.headers.get("Accept", ""):
                    return redirect_to_login(request.get_full_path())
                return unauthorized(request, AuthenticationError())
        return view(request, *args, **kwargs)

    return wrapped


api = NinjaAPI(
    title="Sluice API",
    version="1",
    description=(
        "Sources, revisions, plans, rollouts and the change log of Sluice, and the actions approvers "
        "take on them. Authenticate with `Authorization: Bearer <token>` "
        "(`python manage.py api-token create USERNAME --name NAME`) or a dashboard session (with CSRF)."
    ),
    urls_namespace="dashboard:api",  # dashboard/urls.py includes it inside the dashboard namespace
    auth=[TokenAuth(), SessionAuth()],
    docs_decorator=docs_access,
)


def caller(request: HttpRequest) -> User:
    return cast(User, request.auth)  # type: ignore[attr-defined]


def require(request: HttpRequest, *permissions: str) -> User:
    """The caller, when they hold every one of ``permissions``; else a 403."""
    user = caller(request)
    if not user.is_active or not user.has_perms(permissions):
        raise PermissionDenied(f"{user.get_username()} may not do this")
    return user


# -- errors -------------------------------------------------------------------------------


@api.exception_handler(AuthenticationError)
def unauthorized(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    response = api.create_response(request, {"detail": exc.message}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="sluice"'
    return response


@api.exception_handler(PermissionDenied)
def forbidden(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc) or "Forbidden"}, status=403)


@api.exception_handler(ObjectDoesNotExist)
def not_found(request: HttpRequest, exc: ObjectDoesNotExist) -> HttpResponse:
    return api.create_response(request, {"detail": "Not found"}, status=404)


# The services' names for the fields the API names otherwise: a 422 names the API's field (it named
# ``poll_interval``, which is also what a client that misspelt the field is told of, as unknown).
_API_FIELD = {"poll_interval": "poll_interval_seconds"}


def _settings_detail(exc: SourceSettingsError) -> list[dict[str, Any]]:
    return [
        {"type": "value_error", "loc": ["body", "payload", _API_FIELD.get(field, field)], "msg": message}
        for field, messages in exc.problems.items()
        for message in messages
    ]


@api.exception_handler(SourceSettingsError)
def invalid_settings(request: HttpRequest, exc: SourceSettingsError) -> HttpResponse:
    """Settings a source cannot take: a 422 naming each field, as request validation does."""
    return api.create_response(request, {"detail": _settings_detail(exc)}, status=422)


@api.exception_handler(SourceSettingsConflict)
def conflicting_settings(request: HttpRequest, exc: SourceSettingsConflict) -> HttpResponse:
    """Valid settings the current state refuses (a name taken, a location moved under an active rollout):
    a 409, each problem with its field as a 422's are."""
    return api.create_response(request, {"detail": _settings_detail(exc)}, status=409)


@api.exception_handler(PermanentError)
def conflict(request: HttpRequest, exc: PermanentError) -> HttpResponse:
    """RolloutError and other permanent failures: the request cannot succeed in the current state."""
    return api.create_response(request, {"detail": redact(str(exc))}, status=409)


@api.exception_handler(schedule.PreviewsBusy)
def too_many_previews(request: HttpRequest, exc: schedule.PreviewsBusy) -> HttpResponse:
    response = api.create_response(request, {"detail": str(exc)}, status=429)
    response["Retry-After"] = str(int(exc.delay or 5))
    return response


@api.exception_handler(schedule.TaskNotQueued)
def not_queued(request: HttpRequest, exc: schedule.TaskNotQueued) -> HttpResponse:
    """The broker refused a sync's (or a preview's) task; what was decided before it (a promote) is stored."""
    log.warning("%s", exc)
    what = "sync" if isinstance(exc, schedule.SyncNotQueued) else "preview"
    detail = f"the {what} could not be queued (the broker did not take it); try again"
    response = api.create_response(request, {"detail": detail}, status=503)
    response["Retry-After"] = "5"
    return response


@api.exception_handler(TemporaryError)
def unavailable(request: HttpRequest, exc: TemporaryError) -> HttpResponse:
    response = api.create_response(request, {"detail": redact(str(exc))}, status=503)
    response["Retry-After"] = str(int(exc.delay or 5))
    return response


# -- schemas ------------------------------------------------------------------------------


class ErrorOut(Schema):
    detail: str


class ValidationErrorOut(Schema):
    detail: list[dict[str, Any]]


class PageIn(Schema):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description=f"at most {MAX_LIMIT}")
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


WorkloadKind = StrEnum("WorkloadKind", {kind.upper(): kind for kind in WORKLOAD_KINDS})  # type: ignore[misc]


class ConsumerStateOut(Schema):
    """A workload that reads a ConfigMap the last step changed, as its controller last reported it."""

    cluster: str = Field("", description="the cluster it runs in (empty in states from before clusters)")
    kind: WorkloadKind
    namespace: str
    name: str
    restarted: bool = Field(description="this step stamped its pod template, so its pods were replaced")
    restartable: bool = Field(
        description='false when annotated sluice.dev/restart: "false", or when it refers to a Deployment'
        " (only watched)"
    )
    refers_to: str = Field(
        "",
        description="an Argo Rollout's spec.workloadRef: the Deployment stamped in its place, else empty",
    )
    health: Health
    detail: str = Field(description='"3/3 available", "updating 1/2", "ProgressDeadlineExceeded: ..."')


class RolloutOut(Schema):
    """A rollout's state, as ``gitops status --json`` shows it."""

    id: int
    source: str
    commit: str
    phase: str
    step: int
    steps: int
    weight: int
    waiting_for: str
    pause_until: datetime | None
    approvals: int
    approvals_required: int
    message: str
    created_at: datetime | None
    finished_at: datetime | None
    consumers: ConsumerMode = Field(description="what a ConfigMap step does to the workloads that read it")
    health_timeout_seconds: int = Field(description="how long a wave's consumers may take to be healthy")
    consumer_states: list[ConsumerStateOut] = Field(
        description="the consumers of the latest step that had any; while the rollout waits for them, "
        "updated as their controllers report"
    )
    rollback_pending_clusters: list[str] = Field(
        description="clusters a rollback could not reach yet; each is restored as soon as it answers"
    )
    flag_population: str = Field(
        description="the seed its flag canaries hash with each targeting key, so that every flag it changes "
        'reaches the same users (flagd\'s fractional on "sluice-canary/<seed>/" + targetingKey); empty for '
        "a rollout begun before seeds, whose flags each split their own users"
    )


class RevisionStatusOut(Schema):
    commit: str
    author: str
    message: str
    outcome: str
    errors: list[str]
    force_pushed_over: str
    summary: dict[str, int]


class PlanSummaryOut(Schema):
    commit: str
    weight: int
    computed_at: datetime | None
    summary: dict[str, int]


class SourceOut(Schema):
    name: str
    url: str
    branch: str
    path: str
    poll_interval_seconds: int
    credentials_ref: str = Field(description="where the credentials live (env:VAR, file:/path); never them")
    last_fetched_at: datetime | None
    last_synced_at: datetime | None
    commit: str
    revision_outcome: str | None
    managed_objects: int
    drift: int
    conflicts: int
    active_rollout: RolloutOut | None
    last_error: str
    consecutive_failures: int = Field(description="reconciles that failed in a row; the source backs off")
    suspended: bool = Field(
        description="polls, pushes and timers do not sync it (Flux's suspend); a requested sync does"
    )
    suspended_at: datetime | None
    suspended_by: str


class RemovalOut(Schema):
    """A source's deletion, run by a worker: each object kept (released) or pruned, then the source."""

    id: int
    source: str
    objects: ObjectsOnRemoval = Field(description="keep: released, content left; prune: deleted")
    status: RemovalStatus
    requested_by: str
    via: AuditVia
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    objects_total: int
    objects_done: int
    objects_failed: int
    message: str = Field(description="why it failed, when it did")


class GateOut(Schema):
    """Whether a source's changes may go out now."""

    state: str = Field(description="open, frozen, deny-window or outside-allow")
    automatic: bool = Field(description="polls, pushes, timed pauses and analysis go on by themselves")
    manual: bool = Field(description="a person's sync may go out (a sync window's manualSync)")
    reason: str = Field(description='"frozen until ... : reason", "outside its sync windows; ..."')
    until: datetime | None = Field(description="when it opens again, as far as is known now")


class SourceDetailOut(SourceOut):
    allowed_namespaces: list[str]
    analysis_url_prefixes: list[str]
    required_approvals: int = Field(description="approvers an administrator requires past the first step")
    commit_url_template: str
    notify_urls: list[str] = Field(
        description="where events go, masked (scheme, host and a fingerprint): such URLs may carry a token"
    )
    removal: RemovalOut | None = Field(description="its latest removal, while it runs or when it failed")
    next_try_at: datetime | None
    applied_commit: str
    revision: RevisionStatusOut | None
    plan: PlanSummaryOut | None
    consumer_map: dict[str, list[str]] = Field(
        description='which workloads read which of the source\'s ConfigMaps: {"namespace/Kind/name": '
        "[configmap, ...]}; empty until Sluice has looked"
    )
    consumer_map_at: datetime | None = Field(description="when the consumer map was made")
    gate: GateOut = Field(description="whether a freeze or a sync window holds the source's changes now")


class SourcePage(Schema):
    items: list[SourceOut]
    count: int
    limit: int
    offset: int


class RevisionErrorOut(Schema):
    file: str
    line: int | None
    field: str
    message: str


class RevisionOut(Schema):
    id: int
    commit: str
    author_name: str
    author_email: str
    message: str
    committed_at: datetime | None
    fetched_at: datetime
    outcome: str
    errors: list[RevisionErrorOut]
    force_pushed_over: str
    summary: dict[str, int]


class RevisionPage(Schema):
    items: list[RevisionOut]
    count: int
    limit: int
    offset: int


class DiffOut(Schema):
    op: str
    field: str
    key: str | None = None
    old: Any = None
    new: Any = None
    unified: str | None = None


class PlanItemOut(Schema):
    cluster: str = ""
    namespace: str
    name: str
    kind: str
    action: str
    reason: str
    origin: str | None
    diff: list[DiffOut]
    diff_cut: bool = Field(
        False, description="true: this item's diff is too large to carry with the others; diff is empty"
    )
    diff_keys: int | None = Field(None, description="with diff_cut: how many keys differ")


class PlanConsumerOut(Schema):
    kind: WorkloadKind
    namespace: str
    name: str
    action: str = Field(description="restart, or wait (consumers: watch, or pinned)")
    reads: list[str] = Field(description="the changed ConfigMaps it reads")


class PlanOut(PlanSummaryOut):
    source: str
    items: list[PlanItemOut]
    revision: str | None = Field(
        None, description="the revision asked for with ?revision=; absent for the last reconcile's plan"
    )
    valid: bool = Field(True, description="false: the revision is invalid, see errors; nothing is planned")
    errors: list[RevisionErrorOut] = Field([], description="why the revision is invalid, file by file")
    items_total: int | None = Field(
        None,
        description="how many objects differ; items holds the first 500 of them, and their diffs while "
        "they fit in 4 Mi characters (absent from plans stored before it was counted)",
    )
    consumers: list[PlanConsumerOut] = Field(
        [], description="with ?revision=: the workloads the change would restart or wait for"
    )
    consumer_problems: list[str] = Field(
        [],
        description="with ?revision=: clusters where a step could not list the consumers of what it "
        "changes (RBAC): it would fail there and roll back",
    )


class PlanQuery(Schema):
    revision: str | None = Field(
        None,
        max_length=MAX_REVISION_LENGTH,
        description="plan this revision of the remote instead: " + ACCEPTED_FORMS + ". A worker fetches "
        "it, validates it and plans it against the cluster as it is now; nothing is applied or recorded",
    )

    @field_validator("revision")
    @classmethod
    def previewable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return parse_revision(value).text
        except InvalidRevision as invalid:
            raise ValueError(str(invalid)) from None


class ApprovalOut(Schema):
    username: str
    step: int
    commit: str
    content_hash: str
    comment: str
    at: datetime


class EventOut(Schema):
    at: datetime
    kind: str
    step: int
    weight: int
    actor: str
    message: str
    data: dict[str, Any]


class RolloutRevisionOut(Schema):
    commit: str
    author_name: str
    author_email: str
    message: str


class RolloutTargetOut(Schema):
    """An object the rollout changed (a ConfigMap or a restarted workload), with its latest change."""

    cluster: str
    namespace: str
    kind: str
    name: str
    action: str
    step: int
    weight: int
    result: str
    at: datetime
    actor: str


class RolloutDetailOut(RolloutOut):
    revision: RolloutRevisionOut
    created_by: str
    promoted_by: str
    abort_requested_by: str
    abort_reason: str
    content_hash: str
    forbid_self_approval: bool
    step_definitions: list[dict[str, Any]]
    approved_by: list[ApprovalOut]
    events: list[EventOut]
    targets: list[RolloutTargetOut] = Field(
        description=f"the objects it changed, by cluster, namespace, kind and name (at most "
        f"{selectors.ROLLOUT_TARGETS_SHOWN}); targets_total counts them all"
    )
    targets_total: int


class RolloutPage(Schema):
    items: list[RolloutOut]
    count: int
    limit: int
    offset: int


class ChangeOut(Schema):
    id: int
    at: datetime
    source: str
    commit: str
    cluster: str
    namespace: str
    kind: str
    name: str
    action: str
    actor: str
    step: int
    weight: int
    result: str
    error: str
    before_hash: str
    after_hash: str
    # Null only with ?diff=false. Not left out of the item: that takes exclude_unset, which would also
    # drop each diff entry's null key, old, new or unified that clients read today.
    diff: list[DiffOut] | None = Field(description="key by key; null with ?diff=false")


# The change log's count stops this many rows past the page's offset: an exact COUNT(*) reads every
# matching row of a log of millions on every page. Past the offset, so that a client that pages by
# offset while offset < count still reaches the end; the count then reads what the OFFSET skips, and the cap.
CHANGE_COUNT_CAP = 10_000


class ChangePage(Schema):
    items: list[ChangeOut]
    count: int = Field(
        description=f"the changes that match the filters (before aside); with count=capped, counted up "
        f"to offset + {CHANGE_COUNT_CAP:,}, and when count_exact is false there are more than count"
    )
    count_exact: bool = Field(
        description="false (count=capped only): counting stopped at offset + the cap, so count is a "
        "lower bound; page on with next_before (or offset) until next_before is null"
    )
    limit: int
    offset: int
    next_before: int | None = Field(
        description="the before of the next page (the id of this page's last item); null: no change "
        "after this page"
    )


class FlagOut(Schema):
    """A flag a source publishes, as the Flags page shows it (see the README's "The Flags page")."""

    source: str
    cluster: str
    namespace: str
    flag_set: str = Field(description="the ConfigMap the flag set is published as")
    key: str
    state: str = Field(description="ENABLED or DISABLED")
    variants: str = Field(description='each variant and its value, "on: true · off: false" (cut at 300)')
    variant_count: int
    default_variant: str = Field(description="empty: none, the application's code default")
    targeting: str = Field(description='in words: "none", "fractional 20/80 (on/off) on targetingKey"')
    serves_one_variant: bool
    removed: bool = Field(description="Git no longer has it; it leaves when its rollout reaches 100%")
    rollout: int | None = Field(description="the rollout that brought or brings this definition")
    rollout_phase: str | None
    share_percent: int = Field(description="the share of users who get this definition (or its removal) now")
    changed_commit: str = Field(description="the commit of the change that first published this definition")
    changed_at: datetime | None
    stale: bool
    stale_reasons: list[StaleReason]
    changes_at_full: int | None = Field(
        description="a running rollout that gives every user a new definition of this flag at once when it"
        " reaches 100%: its variants change type (flagd gives a flag one type), and until then everyone"
        " has this one; or it moves between flag sets, and until then nobody has this row's change"
    )


class FlagPage(Schema):
    items: list[FlagOut]
    count: int
    limit: int
    offset: int


# Typed query parameters for the OpenAPI document: the shared vocabulary, and the models' choices.
# A filter's phase: each of the model's, or active (progressing or paused), as the page and the CLI take it.
RolloutPhase = StrEnum(  # type: ignore[misc]
    "RolloutPhase", {"ACTIVE": "active", **{phase.name: phase.value for phase in Rollout.Phase}}
)


class RolloutFilters(Schema):
    source: str | None = Field(None, max_length=63, pattern=SOURCE_NAME)
    phase: RolloutPhase | None = None


class ChangeFilters(Schema):
    source: str | None = Field(None, max_length=63, pattern=SOURCE_NAME)
    cluster: str | None = Field(None, max_length=63, pattern=SOURCE_NAME)
    commit: str | None = Field(None, pattern=COMMIT_PREFIX, description="a full hash or a prefix")
    namespace: str | None = Field(None, max_length=63, pattern=NAMESPACE)
    name: str | None = Field(None, max_length=253, pattern=OBJECT_NAME)
    action: ChangeAction | None = None
    actor: str | None = Field(None, max_length=150, pattern=NO_NUL)
    rollout: int | None = Field(
        None, ge=1, le=MAX_ID, description="a rollout's changes: its steps, its rollback and its heals"
    )
    since: datetime | None = Field(None, description="changes at or after this time (ISO 8601)")
    until: datetime | None = Field(None, description="changes before this time (ISO 8601)")

    @field_validator("since", "until")
    @classmethod
    def aware(cls, value: datetime | None) -> datetime | None:
        """A time without an offset is taken as UTC; any time is passed on in UTC (PostgreSQL refuses
        offsets past 15:59, which ISO 8601 allows)."""
        if value is None:
            return None
        if timezone.is_naive(value):
            value = value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError as exc:
            raise ValueError("out of the range of dates") from exc


class ChangeCount(StrEnum):
    EXACT = "exact"
    CAPPED = "capped"


class ChangeQuery(Schema):
    before: int | None = Field(
        None,
        ge=1,
        le=MAX_ID,
        description="changes with a smaller id only: pass the last page's next_before. A walk by before "
        "costs the same on every page, sees each change once and does not shift as changes are logged; "
        "deep offsets are slow on a long log",
    )
    diff: bool = Field(
        True,
        description="false: each item's diff is null (a diff holds the old and new values, up to 1 MiB "
        "each) and is not read from the database",
    )
    count: ChangeCount = Field(
        ChangeCount.EXACT,
        description="exact: count every matching change (reads them all: slow on a log of millions); "
        f"capped: count up to offset + {CHANGE_COUNT_CAP:,}, then say count_exact false",
    )


class FlagFilters(Schema):
    source: str | None = Field(None, max_length=63, pattern=SOURCE_NAME)
    cluster: str | None = Field(None, max_length=253, pattern=NO_NUL)
    stale: bool | None = Field(None, description="true: stale flags only; false: the others")
    key: str | None = Field(None, max_length=200, pattern=NO_NUL, description="part of the flag key")


class Body(Schema):
    """A request body: a field it does not know is a 422, not dropped. A misspelt or renamed field was
    ignored: a PATCH changed nothing and answered 200, a promote's step guard went missing."""

    model_config = ConfigDict(extra="forbid")


class PromoteIn(Body):
    full: bool = Field(False, description="skip the remaining steps and go to 100%")
    step_index: int | None = Field(
        None,
        ge=0,
        le=1000,
        # "step" as a rollout's JSON names it, which a client may echo back.
        validation_alias=AliasChoices("step_index", "step"),
        description="the step the caller saw (the rollout's step, also accepted as step): a promote "
        "sent again after the rollout moved on is refused (409) instead of releasing the next gate",
    )
    comment: str = Field("", max_length=2000, pattern=NO_NUL)
    override: str = Field(
        "",
        max_length=2000,
        pattern=NO_NUL,
        description="while a freeze or a sync window holds the source: an administrator's reason to go on",
    )


class AbortIn(Body):
    reason: str = Field("", max_length=2000, pattern=NO_NUL)


class WaiveRollbackIn(Body):
    # Both are required; an empty one is refused (422) after the caller's role is checked, so that
    # a caller without the role learns nothing from the body's shape.
    cluster: str = Field("", max_length=63, pattern=NO_NUL)
    reason: str = Field("", max_length=2000, pattern=NO_NUL)


# Lengths and types here; what a value means (a glob, a URL prefix, a reference) the service checks, so that
# the API, the command line and the dashboard answer the same input the same way.
Text = Annotated[str, Field(max_length=2000, pattern=NO_NUL)]
ListedText = Annotated[list[Text], Field(max_length=source_admin.MAX_LISTED)]


class SourcePatchIn(Body):
    """A source's settings to change; what is left out (or null) keeps its value, and [] empties a list."""

    url: Text | None = Field(None, description="the Git URL, without credentials")
    branch: Text | None = None
    path: Text | None = Field(None, description="a directory within the repository")
    poll_interval_seconds: int | None = Field(None, ge=1, le=10**6, description="5 to 86400")
    credentials_ref: Text | None = Field(
        None, description="env:VAR, file:/path or ssh-key:/path; never the secret"
    )
    allowed_namespaces: ListedText | None = Field(None, description="namespace globs it may write to")
    analysis_url_prefixes: ListedText | None = None
    required_approvals: int | None = Field(None, ge=-(10**6), le=10**6, description="0 to 10")
    commit_url_template: Text | None = Field(
        None, description="e.g. https://github.com/org/repo/commit/{commit}"
    )
    notify_urls: ListedText | None = None

    def settings(self) -> dict[str, Any]:
        values = self.model_dump(exclude_none=True)
        if "poll_interval_seconds" in values:
            values["poll_interval"] = timedelta(seconds=values.pop("poll_interval_seconds"))
        return values


class SourceIn(SourcePatchIn):
    """A new source. ``name``, ``url`` and ``allowed_namespaces`` are required (a 422 names what is
    missing, after the caller's role is checked); the rest has the command line's defaults."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "shop-config",
                    "url": "https://git.example.invalid/team/shop-config.git",
                    "allowed_namespaces": ["shop-*"],
                    "credentials_ref": "env:SHOP_GIT_TOKEN",
                    "poll_interval_seconds": 300,
                }
            ]
        }
    )

    name: Annotated[str, Field(max_length=100, pattern=NO_NUL)] | None = Field(
        None, description="lowercase letters, digits and '-', at most 63"
    )

    def settings(self) -> dict[str, Any]:
        values = super().settings()
        missing = [field for field in ("name", "url", "allowed_namespaces") if field not in values]
        if missing:
            raise SourceSettingsError({field: ["this field is required"] for field in missing})
        return values


class SyncOut(Schema):
    source: str
    task_id: str
    actor: str
    retry_failed: bool = False


class SyncIn(Body):
    retry_failed: bool = Field(
        False,
        description="also send again what a finished rollout's cluster refused for a field conflict with"
        " another field manager (once it let go of the fields), as `gitops sync --retry-failed` does; any"
        " other refusal is tried again at every pass anyway",
    )


SourceName = Annotated[str, Path(..., max_length=63, pattern=SOURCE_NAME)]
RolloutId = Annotated[int, Path(..., ge=1, le=MAX_ID)]
RemovalId = Annotated[int, Path(..., ge=1, le=MAX_ID)]


class RemoveQuery(Schema):
    objects: ObjectsOnRemoval = Field(
        description="what happens to the objects it manages: keep (labels and ownership removed) or prune"
    )


# 400: a NUL in the address or the query string, refused before any view runs (RefuseNulMiddleware).
AUTH_ERRORS: dict[int, Any] = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 422: ValidationErrorOut}
READ_ONE_ERRORS: dict[int, Any] = {**AUTH_ERRORS, 404: ErrorOut}
ACTION_ERRORS: dict[int, Any] = {**READ_ONE_ERRORS, 409: ErrorOut}
BODY_ACTION_ERRORS: dict[int, Any] = {**ACTION_ERRORS, 400: ErrorOut}  # a body that is not JSON


# -- presenting ---------------------------------------------------------------------------


def page(items: list[Any], count: int, paging: PageIn) -> dict[str, Any]:
    return {"items": items, "count": count, "limit": paging.limit, "offset": paging.offset}


def window(queryset: QuerySet[Any], paging: PageIn) -> QuerySet[Any]:
    return queryset[paging.offset : paging.offset + paging.limit]


def source_or_404(name: str) -> Source:
    source = Source.objects.filter(name=name).first()
    if source is None:
        raise HttpError(404, f"no source named {name!r}")
    return source


def rollout_or_404(rollout_id: int) -> Rollout:
    rollout = selectors.rollout_read(rollout_id)
    if rollout is None:
        raise HttpError(404, f"no rollout {rollout_id}")
    return rollout


def source_rows(sources: list[Source]) -> list[dict[str, Any]]:
    """List entries for ``sources`` in a fixed number of queries, however many there are.

    ``selectors.source_status`` runs several queries per source; a list cannot afford that.
    """
    ids = [source.pk for source in sources]
    latest = {
        revision.source_id: revision
        for revision in Revision.objects.filter(source_id__in=ids)
        .order_by("source_id", "-fetched_at", "-id")
        .distinct("source_id")
        .only("source_id", "outcome", "summary")
    }
    active = {
        rollout.source_id: rollout
        for rollout in selectors.with_approval_count(
            Rollout.objects.filter(source_id__in=ids, phase__in=Rollout.ACTIVE_PHASES)
        )
        .select_related("revision")
        .order_by("source_id", "-id")
        .distinct("source_id")
    }
    selectors.strict_gates_count(list(active.values()))
    managed = dict(
        ManagedObject.objects.filter(source_id__in=ids)
        .values("source_id")
        .annotate(n=Count("id"))
        .values_list("source_id", "n")
    )
    rows = []
    for source in sources:
        revision = latest.get(source.pk)
        rollout = active.get(source.pk)
        if rollout is not None:
            rollout.source = source  # rollout_status reads its name; no query
        summary = (revision.summary if revision else {}) or {}
        rows.append(
            {
                "name": source.name,
                "url": url_without_query(source.url),
                "branch": source.branch,
                "path": source.path,
                "poll_interval_seconds": int(source.poll_interval.total_seconds()),
                "credentials_ref": source.credentials_ref,
                "last_fetched_at": source.last_fetched_at,
                "last_synced_at": source.last_synced_at,
                "commit": source.last_commit,
                "revision_outcome": revision.outcome if revision else None,
                "managed_objects": managed.get(source.pk, 0),
                "drift": drift_count(summary),
                "conflicts": summary.get("conflict", 0),
                "active_rollout": selectors.rollout_status(rollout) if rollout else None,
                "last_error": redact(source.last_error),
                "consecutive_failures": source.consecutive_failures,
                "suspended": source.suspended,
                "suspended_at": source.suspended_at,
                "suspended_by": source.suspended_by,
            }
        )
    return rows


def source_detail(source: Source) -> dict[str, Any]:
    status = selectors.source_status(source)
    plan = source.last_plan or {}
    revision = status["revision"]
    return {
        **status,
        "credentials_ref": source.credentials_ref,
        "allowed_namespaces": list(source.allowed_namespaces or []),
        "analysis_url_prefixes": list(source.analysis_url_prefixes or []),
        "required_approvals": source.required_approvals,
        "commit_url_template": source.commit_url_template,
        "notify_urls": [masked_url(url) for url in source.notify_urls or []],
        "removal": removal_row(latest) if (latest := source.removals.order_by("-id").first()) else None,
        "revision_outcome": revision["outcome"] if revision else None,
        "last_error": redact(status["last_error"]),
        "plan": {key: plan.get(key) for key in ("commit", "weight", "computed_at", "summary")}
        if plan
        else None,
    }


def removal_row(removal: SourceRemoval) -> dict[str, Any]:
    return {
        "id": removal.pk,
        "source": removal.source_name,
        "objects": removal.mode,
        "status": removal.status,
        "requested_by": removal.requested_by,
        "via": removal.via,
        "requested_at": removal.requested_at,
        "started_at": removal.started_at,
        "finished_at": removal.finished_at,
        "objects_total": removal.objects_total,
        "objects_done": removal.objects_done,
        "objects_failed": removal.objects_failed,
        "message": redact(removal.message),
    }


def revision_row(revision: Revision) -> dict[str, Any]:
    return {
        "id": revision.pk,
        "commit": revision.commit,
        "author_name": revision.author_name,
        "author_email": revision.author_email,
        "message": revision.message,
        "committed_at": revision.committed_at,
        "fetched_at": revision.fetched_at,
        "outcome": revision.outcome,
        "errors": [redacted_error(RevisionError.from_dict(error).as_dict()) for error in revision.errors],
        "force_pushed_over": revision.force_pushed_over,
        "summary": revision.summary or {},
    }


def redacted_error(error: dict[str, Any]) -> dict[str, Any]:
    """A revision's error as pages show it: it may quote what the repository holds (a URL, a token)."""
    message = error.get("message")
    return {**error, "message": redact(message)} if isinstance(message, str) else error


# -- reading ------------------------------------------------------------------------------


@api.get("/sources", response={200: SourcePage, **AUTH_ERRORS}, tags=["sources"])
def list_sources(request: HttpRequest, paging: Query[PageIn]) -> dict[str, Any]:
    """Every source with its latest revision's outcome and its active rollout, by name."""
    require(request, "gitops.view_source", "gitops.view_rollout")
    sources = list(window(Source.objects.defer(*Source.BULK_FIELDS).order_by("name"), paging))
    return page(source_rows(sources), Source.objects.count(), paging)


class ClusterOut(Schema):
    name: str
    default: bool = Field(description="the cluster KUBECONFIG names (SLUICE_CLUSTER_NAME)")
    credentials: str = Field(description="where its credentials live, never the credentials")
    server: str = Field(description="its API server URL, credentials in it as ***")
    reachable: bool
    version: str = Field(description="its Kubernetes version, asked just now")
    error: str = Field(description="why it does not answer, or empty")
    sources: list[str] = Field(description="the sources whose validated policy targets it")
    objects: int = Field(description="the objects Sluice applied there")


@api.get("/clusters", response={200: list[ClusterOut], **AUTH_ERRORS}, tags=["clusters"])
def list_clusters(request: HttpRequest) -> list[dict[str, Any]]:
    """The default cluster and every registered one, each asked for its version just now (a few
    seconds at most), as the Clusters page and `gitops clusters --json` show them."""
    require(request, "gitops.view_source")
    return [status.as_dict() for status in cluster_admin.clusters_status()]


@api.get("/sources/{name}", response={200: SourceDetailOut, **READ_ONE_ERRORS}, tags=["sources"])
def get_source(request: HttpRequest, name: SourceName) -> dict[str, Any]:
    """One source's status: latest and applied revision, active rollout, the last plan's summary."""
    require(request, "gitops.view_source", "gitops.view_rollout")
    return source_detail(source_or_404(name))


@api.get("/sources/{name}/revisions", response={200: RevisionPage, **READ_ONE_ERRORS}, tags=["sources"])
def list_revisions(request: HttpRequest, name: SourceName, paging: Query[PageIn]) -> dict[str, Any]:
    """The commits Sluice fetched for a source, newest first, with validation errors by file and line."""
    require(request, "gitops.view_source", "gitops.view_revision")
    revisions = Revision.objects.filter(source=source_or_404(name)).order_by("-fetched_at", "-id")
    return page([revision_row(r) for r in window(revisions, paging)], revisions.count(), paging)


@api.get(
    "/sources/{name}/plan",
    response={200: PlanOut, **READ_ONE_ERRORS, 409: ErrorOut, 429: ErrorOut, 503: ErrorOut},
    tags=["sources"],
)
def get_plan(request: HttpRequest, name: SourceName, query: Query[PlanQuery]) -> dict[str, Any]:
    """The plan the last reconcile computed: the objects that differ from Git, key by key (the first
    500, see ``items_total``; ``gitops diff NAME`` prints every one).

    With ``revision``, the plan of that revision instead (a pull request's head, say), computed now by
    a worker: 404 when the remote has no such ref, 503 when Git or the cluster did not answer.
    """
    user = require(request, "gitops.view_source")
    if query.revision is not None and not sent_with_a_token(request):
        # A GET carries no CSRF token, and a top-level link from any site carries the session's cookie:
        # a session's preview (a worker's fetch, a slot of the preview caps) is the dashboard's POST.
        raise PermissionDenied(
            "a preview runs on a worker: call it with an API token, or use the source page's "
            "Preview a revision form"
        )
    source = source_or_404(name)
    if query.revision is not None:
        return previewed_plan(source, query.revision, actor=user.get_username())
    if not source.last_plan:
        raise HttpError(404, f"{source.name} has no plan yet; it has not been reconciled")
    return {**source.last_plan, "source": source.name}


def sent_with_a_token(request: HttpRequest) -> bool:
    """Whether the caller authenticated with ``Authorization: Bearer`` (TokenAuth), not the session."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def previewed_plan(source: Source, revision: str, *, actor: str) -> dict[str, Any]:
    """A worker's preview of ``revision`` (the web has no mirror and no access to ConfigMaps)."""
    task_id = schedule.revision_preview(source.pk, revision, actor=actor)
    waited = schedule.preview_deadline_seconds()
    answer = schedule.revision_preview_answer(task_id, wait=waited)
    if answer is None:
        raise TemporaryError(f"no worker answered within {waited}s", delay=10)
    outcome = answer.get("outcome")
    if outcome == PreviewOutcome.NOT_FOUND:
        raise HttpError(404, redact(answer["detail"]))
    if outcome == PreviewOutcome.UNAVAILABLE:
        raise TemporaryError(answer["detail"])
    if outcome not in (PreviewOutcome.PLANNED, PreviewOutcome.REJECTED):
        raise PermanentError(answer.get("detail") or "the preview failed")
    # Its errors quote the revision's files, as a revision's do: redacted as pages show them.
    errors = [redacted_error(error) for error in answer.get("errors") or [] if isinstance(error, dict)]
    return {**answer, "errors": errors, "valid": outcome == PreviewOutcome.PLANNED}


@api.get("/rollouts", response={200: RolloutPage, **AUTH_ERRORS}, tags=["rollouts"])
def list_rollouts(
    request: HttpRequest, filters: Query[RolloutFilters], paging: Query[PageIn]
) -> dict[str, Any]:
    """Rollouts, newest first."""
    require(request, "gitops.view_rollout")
    found = selectors.with_approval_count(
        Rollout.objects.select_related("source", "revision").defer(*Source.related_bulk("source"))
    )
    if filters.source:
        found = found.filter(source__name=filters.source)
    if filters.phase and filters.phase.value == "active":
        found = found.filter(phase__in=Rollout.ACTIVE_PHASES)
    elif filters.phase:
        found = found.filter(phase=filters.phase.value)
    found = found.order_by("-created_at", "-id")
    shown = list(window(found, paging))
    selectors.strict_gates_count(shown)
    return page([selectors.rollout_status(r) for r in shown], found.count(), paging)


@api.get("/rollouts/{rollout_id}", response={200: RolloutDetailOut, **READ_ONE_ERRORS}, tags=["rollouts"])
def get_rollout(request: HttpRequest, rollout_id: RolloutId) -> dict[str, Any]:
    """One rollout with its approvals and its timeline."""
    require(request, "gitops.view_rollout", "gitops.view_approval", "gitops.view_rolloutevent")
    return selectors.rollout_detail(rollout_or_404(rollout_id))


@api.get("/changes", response={200: ChangePage, **AUTH_ERRORS}, tags=["changes"])
def list_changes(
    request: HttpRequest, filters: Query[ChangeFilters], paging: Query[PageIn], query: Query[ChangeQuery]
) -> dict[str, Any]:
    """The change log, newest first by id (the order it was logged in, as the Changes page and its
    export list it). ``since`` is inclusive, ``until`` exclusive.

    Page with ``before=<next_before>`` until ``next_before`` is null: each page costs what the first
    does. ``limit`` and ``offset`` page as they did. ``count`` is exact, or with ``count=capped`` exact
    up to offset + 10,000 (``count_exact``). With ``diff=false`` each item's diff is null, and is not
    read. Full rows, with their contents, stream from the dashboard's export:
    ``/changes/?format=json&bodies=1``.
    """
    require(request, "gitops.view_change")
    changes = changes_filtered(filters)
    rows = list(changes_window(changes, paging, query))
    more = len(rows) > paging.limit  # one row past the page says whether there is a next one
    rows = rows[: paging.limit]
    if query.count is ChangeCount.CAPPED:
        count, exact = changes_counted(changes, paging.offset)
    else:  # as it always was: a client may have computed its pages from the first page's count
        count, exact = changes.order_by().count(), True
    items = [{"diff": None, **selectors.change_as_dict(c, with_diff=query.diff)} for c in rows]
    return {**page(items, count, paging), "count_exact": exact, "next_before": rows[-1].pk if more else None}


def changes_filtered(filters: ChangeFilters) -> QuerySet[Any]:
    return selectors.change_log(
        source=filters.source,
        cluster=filters.cluster,
        commit=filters.commit,
        namespace=filters.namespace,
        name=filters.name,
        action=filters.action.value if filters.action else None,
        actor=filters.actor,
        rollout=filters.rollout,
        since=filters.since,
        until=filters.until,
    )


def changes_window(changes: QuerySet[Any], paging: PageIn, query: ChangeQuery) -> QuerySet[Any]:
    """The page's rows and one more. By id, not by time as ``selectors.change_log``: a before (an id)
    then picks up where the last page ended, offset pages agree with before pages, and the primary key
    or the (source, -id) index serves a page without sorting. ``at`` is the logging worker's clock,
    ``id`` the database's order: they disagree only for passes logged by workers at nearly the same
    moment, or whose clocks disagree."""
    if query.before is not None:
        changes = changes.filter(id__lt=query.before)
    # Full contents (before, after) are large and not part of a list entry; the diff holds the old and
    # new values, as large, when it is not wanted. Of the source only its name: the join otherwise
    # brings its last plan (megabytes) once for every row.
    left_out = {"before", "after"} if query.diff else {"before", "after", "diff"}
    kept = [field.name for field in changes.model._meta.concrete_fields if field.name not in left_out]
    start = paging.offset
    return changes.order_by("-id").only(*kept, "source__name")[start : start + paging.limit + 1]


def changes_counted(changes: QuerySet[Any], offset: int) -> tuple[int, bool]:
    """How many changes match, counted up to ``offset + CHANGE_COUNT_CAP``, and whether that is all.

    COUNT(*) over a LIMITed subquery: PostgreSQL stops reading at the limit. Unordered and ids only,
    so no sort and no row bodies."""
    cap = offset + CHANGE_COUNT_CAP
    counted = changes.order_by().values("pk")[: cap + 1].count()
    return (counted, True) if counted <= cap else (cap, False)


@api.get("/flags", response={200: FlagPage, **AUTH_ERRORS}, tags=["flags"])
def list_flags(request: HttpRequest, filters: Query[FlagFilters], paging: Query[PageIn]) -> dict[str, Any]:
    """Every flag every source publishes, in the Flags page's order, with staleness and rollout share."""
    require(request, "gitops.view_source", "gitops.view_change")
    now = timezone.now()
    staleness = {True: Staleness.STALE, False: Staleness.FRESH, None: Staleness.ANY}[filters.stale]
    chosen = selectors.FlagFilters(
        source=filters.source or "", cluster=filters.cluster or "", staleness=staleness, key=filters.key or ""
    )
    flags = selectors.published_flags(chosen, now=now)
    rows = [selectors.flag_row(flag, now=now) for flag in window(flags, paging)]
    return page([flag_entry(row) for row in rows], flags.count(), paging)


def flag_entry(row: selectors.FlagRow) -> dict[str, Any]:
    flag, rollout = row.flag, row.flag.rollout
    return {
        **{name: getattr(flag, name) for name in FLAG_FIELDS},
        "source": flag.source.name,
        "rollout": rollout.pk if rollout else None,
        "rollout_phase": rollout.phase if rollout else None,
        "share_percent": row.share,
        "stale": bool(row.stale_reasons),
        "stale_reasons": list(row.stale_reasons),
        "changes_at_full": later.pk if (later := row.changes_at_full) is not None else None,
    }


FLAG_FIELDS = (
    "cluster",
    "namespace",
    "flag_set",
    "key",
    "state",
    "variants",
    "variant_count",
    "default_variant",
    "targeting",
    "serves_one_variant",
    "removed",
    "changed_commit",
    "changed_at",
)


# -- acting -------------------------------------------------------------------------------


@api.post("/sources/{name}/sync", response={202: SyncOut, **READ_ONE_ERRORS, 503: ErrorOut}, tags=["sources"])
def sync_source(request: HttpRequest, name: SourceName, body: SyncIn | None = None) -> Status[dict[str, Any]]:
    """Queues a sync of the source on a worker (approvers and admins); the task id comes back. The body
    may be left out; ``retry_failed`` sends the refused changes again."""
    user = caller(request)
    if not user.is_active or not (user.has_perm(APPROVE) or user.has_perm(CHANGE_SOURCE)):
        raise PermissionDenied(f"{user.get_username()} may not sync sources")
    source = source_or_404(name)
    retry = (body or SyncIn()).retry_failed
    with transaction.atomic():  # a broker that refuses the task: 503 (``not_queued``)
        task_ids = schedule.source_sync(
            source.pk, actor=user.get_username(), manual=True, result_wanted=True, retry_failed=retry
        )
    # on_commit ran when the block above committed, so the task is queued and its id known.
    answer = {
        "source": source.name,
        "task_id": task_ids[0],
        "actor": user.get_username(),
        "retry_failed": retry,
    }
    return Status(202, answer)


@api.post(
    "/rollouts/{rollout_id}/promote", response={200: RolloutOut, **BODY_ACTION_ERRORS}, tags=["rollouts"]
)
def promote_rollout(
    request: HttpRequest, rollout_id: RolloutId, body: PromoteIn | None = None
) -> dict[str, Any]:
    """Approves the gate the rollout waits at; with enough approvals it goes on (``full``: to 100%). The
    body may be left out, as a retry's is."""
    user = caller(request)
    body = body or PromoteIn()
    rollout = decisions.rollout_promote(
        rollout_id,
        user=user,
        full=body.full,
        comment=body.comment,
        override=body.override,
        at_step=body.step_index,
    )
    return selectors.rollout_status(rollout)


@api.post("/rollouts/{rollout_id}/abort", response={202: RolloutOut, **BODY_ACTION_ERRORS}, tags=["rollouts"])
def abort_rollout(
    request: HttpRequest, rollout_id: RolloutId, body: AbortIn | None = None
) -> Status[dict[str, Any]]:
    """Asks for a rollback; a worker restores every target the rollout changed. The body may be left out."""
    rollout = decisions.rollout_abort(rollout_id, user=caller(request), reason=(body or AbortIn()).reason)
    return Status(202, selectors.rollout_status(rollout))


@api.post(
    "/rollouts/{rollout_id}/waive-rollback",
    response={200: RolloutOut, **BODY_ACTION_ERRORS, 422: ValidationErrorOut},
    tags=["rollouts"],
)
def waive_rollout_rollback(
    request: HttpRequest, rollout_id: RolloutId, body: WaiveRollbackIn
) -> Status[dict[str, Any]]:
    """Lets a cluster off the rollback the ended rollout still owes it (administrators, with a reason):
    what the rollout wrote there stays. For a cluster gone for good."""
    user = caller(request)
    decisions.waive_permission_check(user)
    Rollout.objects.only("pk").get(pk=rollout_id)  # a 404 before the body's 422, as the other actions
    missing = [field for field in ("cluster", "reason") if not getattr(body, field).strip()]
    if missing:
        detail = [{"type": "missing", "loc": ["body", "body", field], "msg": "required"} for field in missing]
        return Status(422, {"detail": detail})
    rollout = decisions.rollout_rollback_waive(
        rollout_id, cluster=body.cluster, user=user, reason=body.reason
    )
    return Status(200, selectors.rollout_status(rollout))


@api.post("/rollouts/{rollout_id}/retry", response={201: RolloutOut, **ACTION_ERRORS}, tags=["rollouts"])
def retry_rollout(request: HttpRequest, rollout_id: RolloutId) -> Status[dict[str, Any]]:
    """Starts an aborted or failed rollout's revision again from step 0: a new rollout."""
    rollout = decisions.rollout_retry(rollout_id, user=caller(request))
    return Status(201, selectors.rollout_status(rollout))


# -- administering sources (admin role) ------------------------------------------------------------


@api.post(
    "/sources",
    response={201: SourceDetailOut, 400: ErrorOut, **AUTH_ERRORS, 409: ValidationErrorOut},
    tags=["sources"],
)
def create_source(request: HttpRequest, body: SourceIn) -> Status[dict[str, Any]]:
    """Registers a source (admins) and queues its first sync. Settings are checked as `add-source` checks
    them; a 422 names each field that is wrong, a 409 a name another source has."""
    user = require(request, ADD_SOURCE)
    settings = body.settings()
    source = source_admin.source_add(actor=Actor.of_user(user, AuditVia.API), **settings)
    try:
        with transaction.atomic():
            schedule.source_sync(source.pk, actor=user.get_username())
    except schedule.SyncNotQueued:
        # Created all the same (a 503 said "try again", and the retry met its name: a 409). Its first
        # poll is due from its creation: beat's first sweep the broker takes syncs it.
        log.warning("source %s created; the broker refused its first sync, its poll syncs it", source.name)
    return Status(201, source_detail(source))


@api.patch(
    "/sources/{name}",
    response={200: SourceDetailOut, **BODY_ACTION_ERRORS, 409: ValidationErrorOut},
    tags=["sources"],
)
def update_source(request: HttpRequest, name: SourceName, body: SourcePatchIn) -> dict[str, Any]:
    """Changes a source's settings (admins); what is left out keeps its value. The URL, branch and path
    do not change while a rollout is active (a 409 naming each, as a 422 names its fields)."""
    user = require(request, CHANGE_SOURCE)
    source = source_admin.source_update(
        source_or_404(name), actor=Actor.of_user(user, AuditVia.API), **body.settings()
    )
    return source_detail(source)


@api.post("/sources/{name}/suspend", response={200: SourceDetailOut, **ACTION_ERRORS}, tags=["sources"])
def suspend_source(request: HttpRequest, name: SourceName) -> dict[str, Any]:
    """Stops automatic syncs (polls, pushes, timers) of a source (admins); a requested sync still runs."""
    user = require(request, CHANGE_SOURCE)
    source = source_admin.source_suspend(source_or_404(name), actor=Actor.of_user(user, AuditVia.API))
    return source_detail(source)


@api.post("/sources/{name}/resume", response={200: SourceDetailOut, **ACTION_ERRORS}, tags=["sources"])
def resume_source(request: HttpRequest, name: SourceName) -> dict[str, Any]:
    """Lets automatic syncs run again (admins), and queues a sync now; a source not suspended is left
    as it is, and nothing is queued."""
    user = require(request, CHANGE_SOURCE)
    source = source_admin.source_resume(source_or_404(name), actor=Actor.of_user(user, AuditVia.API))
    return source_detail(source)


@api.delete("/sources/{name}", response={202: RemovalOut, **ACTION_ERRORS}, tags=["sources"])
def delete_source(
    request: HttpRequest, name: SourceName, query: Query[RemoveQuery]
) -> Status[dict[str, Any]]:
    """Deletes a source (admins), as a tracked removal a worker runs: each object it manages is kept
    (Sluice's labels, annotations and field ownership removed) or pruned, and logged in the change log.
    A 409 while a rollout is active: abort it first. Follow it at `/api/removals/{id}`."""
    user = require(request, DELETE_SOURCE)
    removal = source_admin.source_remove(
        source_or_404(name), objects=query.objects, actor=Actor.of_user(user, AuditVia.API)
    )
    return Status(202, removal_row(removal))


@api.get("/removals/{removal_id}", response={200: RemovalOut, **READ_ONE_ERRORS}, tags=["sources"])
def get_removal(request: HttpRequest, removal_id: RemovalId) -> dict[str, Any]:
    """A source's removal: queued, running, done or failed, and how many objects it kept or pruned."""
    require(request, "gitops.view_source")
    removal = SourceRemoval.objects.filter(pk=removal_id).first()
    if removal is None:
        raise HttpError(404, f"no removal {removal_id}")
    return removal_row(removal)


# Freezes and sync windows live in their own module, on this API (it imports what it needs from here).
from dashboard.api_freezes import router as freezes_router  # noqa: E402

api.add_router("/", freezes_router)
