"""Source administration pages (admin role): create, edit, suspend, resume, delete, and a removal's status.

Every action calls the same service as ``gitops add-source`` and the API
(``gitops.source_admin``), which checks the settings and the caller's role and
writes the audit row. Others get 403 here, and the pages show them no buttons.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from dashboard.forms import RemoveSourceForm, SourceForm
from gitops import schedule, selectors, source_admin
from gitops.errors import GitopsError
from gitops.models import Change, Rollout, Source, SourceRemoval, admin_settings
from gitops.record.audit import Actor
from gitops.source_admin import SourceRemovalRefused, SourceSettingsError
from gitops.vocabulary import AuditVia, ObjectsOnRemoval

OBJECTS_SHOWN = 200
AUDIT_SHOWN = 20


def source_admin_context(request: HttpRequest, source: Source) -> dict[str, Any]:
    """What the source page adds for administration: its live state, the buttons the caller may use, its
    settings, their history and its latest removal."""
    user = request.user
    return {
        "status": selectors.source_row(source),
        "can_edit": user.has_perm(source_admin.CHANGE),
        "can_delete": user.has_perm(source_admin.DELETE),
        "settings": admin_settings(source),
        "audit": list(source.audit.order_by("-at", "-id")[:AUDIT_SHOWN]),
        "removal": source.removals.order_by("-id").first(),
    }


def _actor(request: HttpRequest, permission: str) -> Actor:
    """The caller as the services see them; a 403 at once when they lack the permission."""
    user = request.user
    if not user.has_perm(permission):
        raise PermissionDenied("only administrators manage sources")
    return Actor.of_user(user, AuditVia.DASHBOARD)  # type: ignore[arg-type]


@login_required
@require_http_methods(["GET", "POST"])
def source_create(request: HttpRequest) -> HttpResponse:
    actor = _actor(request, source_admin.ADD)
    form = SourceForm(request.POST or None, creating=True)
    if request.method == "POST" and form.is_valid():
        try:
            source = source_admin.source_add(actor=actor, **form.settings())
        except SourceSettingsError as exc:
            form.add_problems(exc.problems)
        else:
            try:
                with transaction.atomic():
                    schedule.source_sync(source.pk, actor=actor.name)
            except schedule.SyncNotQueued:
                # Added all the same, and due to be polled at once: sent back to the empty form, the
                # person tried again and was told the name was taken (before 2026-12-07).
                messages.warning(
                    request,
                    f"Source {source.name} added; its first sync could not be queued (the message broker "
                    "did not take it): its first poll runs it once the broker answers.",
                )
            else:
                messages.success(request, f"Source {source.name} added; its first sync is queued.")
            return redirect("dashboard:source", name=source.name)
    return render(request, "dashboard/source_form.html", {"form": form, "creating": True})


@login_required
@require_http_methods(["GET", "POST"])
def source_edit(request: HttpRequest, name: str) -> HttpResponse:
    actor = _actor(request, source_admin.CHANGE)
    source = get_object_or_404(Source, name=name)
    form = SourceForm.editing(source, request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            source_admin.source_update(source, actor=actor, **form.settings())
        except SourceSettingsError as exc:
            form.add_problems(exc.problems)
        else:
            messages.success(request, f"Settings of {source.name} saved.")
            return redirect("dashboard:source", name=source.name)
    return render(request, "dashboard/source_form.html", {"form": form, "creating": False, "source": source})


@login_required
@require_POST
def source_suspend(request: HttpRequest, name: str) -> HttpResponse:
    actor = _actor(request, source_admin.CHANGE)
    source = source_admin.source_suspend(get_object_or_404(Source, name=name), actor=actor)
    messages.success(request, f"{source.name} is suspended: polls, pushes and timers leave it alone.")
    return redirect("dashboard:source", name=source.name)


@login_required
@require_POST
def source_resume(request: HttpRequest, name: str) -> HttpResponse:
    actor = _actor(request, source_admin.CHANGE)
    source = get_object_or_404(Source, name=name)
    if not source.suspended:  # a second click, or another tab: nothing to resume, nothing queued
        messages.info(request, f"{source.name} is not suspended: nothing changed.")
        return redirect("dashboard:source", name=name)
    try:
        source = source_admin.source_resume(source, actor=actor)
    except GitopsError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{source.name} is resumed; a sync is queued.")
    return redirect("dashboard:source", name=name)


@login_required
@require_http_methods(["GET", "POST"])
def source_delete(request: HttpRequest, name: str) -> HttpResponse:
    actor = _actor(request, source_admin.DELETE)
    source = get_object_or_404(Source, name=name)
    form = RemoveSourceForm(request.POST or None, source=source)
    if request.method == "POST" and form.is_valid():
        try:
            removal = source_admin.source_remove(
                source, objects=ObjectsOnRemoval(form.cleaned_data["objects"]), actor=actor
            )
        except SourceRemovalRefused as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Deleting {source.name}: a worker keeps or prunes its objects.")
            return redirect("dashboard:removal", removal_id=removal.pk)
    context = {
        "source": source,
        "form": form,
        "managed": source.managed_objects.count(),
        "active": Rollout.objects.filter(source=source, phase__in=Rollout.ACTIVE_PHASES).first(),
    }
    return render(request, "dashboard/source_delete.html", context)


@login_required
@permission_required("gitops.view_source", raise_exception=True)
def removal_detail(request: HttpRequest, removal_id: int) -> HttpResponse:
    removal = get_object_or_404(
        SourceRemoval.objects.select_related("source").defer(*Source.related_bulk("source")), pk=removal_id
    )
    changes = Change.objects.filter(intent__removal=removal).order_by("namespace", "name", "id")
    context: dict[str, Any] = {
        "removal": removal,
        "changes": list(changes.defer("before", "after", "diff")[:OBJECTS_SHOWN]),
        "changes_total": changes.count(),
    }
    live = request.headers.get("HX-Request")
    return render(request, "dashboard/_removal_live.html" if live else "dashboard/removal.html", context)


@login_required
@permission_required("gitops.view_source", raise_exception=True)
def source_status(request: HttpRequest, name: str) -> HttpResponse:
    """The source page's live block: its state, commit, last sync and whether it is suspended."""
    source = get_object_or_404(Source.objects.defer("last_plan"), name=name)
    return render(request, "dashboard/_source_status.html", {"status": selectors.source_row(source)})
