"""The Freezes and sync windows page, and its actions: freeze, unfreeze, add and remove a window.

Everyone who may read the dashboard reads the page; only administrators see
the forms and buttons, and every POST is checked again by the service it calls
(``gitops.freezes``), CSRF-protected by Django, and recorded with who acted.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from gitops import freezes, selectors
from gitops.models import Rollout, RolloutEvent, Source, SyncWindow
from gitops.numerals import whole_number
from gitops.vocabulary import RolloutEventKind
from gitops.windows import WindowError, WindowKind, parse_duration

OVERRIDES_SHOWN = 20
ALL_SOURCES = ""  # the freeze form's choice for every source


class FreezeForm(forms.Form):
    source = forms.CharField(required=False, max_length=63, help_text="empty: every source")
    until = forms.CharField(max_length=40, help_text="8h or 3d from now, 2026-12-24T18:00Z, or a date")
    reason = forms.CharField(max_length=freezes.MAX_REASON, widget=forms.Textarea(attrs={"rows": 2}))

    def clean_until(self) -> Any:
        try:
            return freezes.parse_until(self.cleaned_data["until"])
        except freezes.FreezeError as exc:
            raise forms.ValidationError(exc.message) from exc

    def clean_source(self) -> Source | None:
        name = self.cleaned_data["source"].strip()
        if name == ALL_SOURCES:
            return None
        source = Source.objects.filter(name=name).first()
        if source is None:
            raise forms.ValidationError(f"no source named {name!r}")
        return source


class WindowForm(forms.Form):
    kind = forms.ChoiceField(choices=[(kind.value, kind.value) for kind in WindowKind])
    schedule = forms.CharField(max_length=100, help_text="cron, five fields: 0 22 * * * opens at 22:00")
    duration = forms.CharField(max_length=20, help_text="30m, 8h, 2d, 1h30m")
    sources = forms.CharField(max_length=2000, initial="*", help_text="names or globs, comma-separated")
    time_zone = forms.CharField(max_length=64, required=False, initial="UTC", help_text="default UTC")
    manual_sync = forms.BooleanField(required=False, help_text="a person's sync may go out while it closes")

    def clean_duration(self) -> Any:
        try:
            return parse_duration(self.cleaned_data["duration"])
        except WindowError as exc:
            raise forms.ValidationError(exc.message) from exc


def _window_row(window: SyncWindow, rules: selectors.Rules) -> dict[str, Any]:
    rule = window.as_rule()
    opened = rule.opened_at(rules.at)
    return {
        "window": window,
        "open_now": opened is not None,
        "closes_at": opened + rule.duration if opened else None,
        "next_opening": rule.next_opening(rules.at),
        "duration_seconds": int(window.duration.total_seconds()),
    }


def can_manage(user: Any) -> bool:
    return bool(user.has_perm(freezes.MANAGE_FREEZES))


def source_gate_context(request: HttpRequest, source: Source) -> dict[str, Any]:
    """What the source page shows of freezes and windows: why changes wait, and the admin's buttons."""
    gate = selectors.source_gate(source)
    return {
        "gate": gate,
        "gate_manual": gate.allows(manual=True),
        "frozen_here": gate.freeze is not None and gate.freeze.source == source.name,
        "can_freeze": can_manage(request.user),
    }


def rollout_gate_context(request: HttpRequest, rollout: Rollout) -> dict[str, Any]:
    """Why an active rollout waits for a freeze or a window, and whether this user may override it."""
    if not rollout.is_active:
        return {"held": "", "can_override": False}
    gate = selectors.source_gate(rollout.source)
    return {
        "held": "" if gate.automatic else gate.reason,
        "can_override": bool(request.user.has_perm(freezes.OVERRIDE)),
    }


def _page(request: HttpRequest, **forms_shown: forms.Form) -> HttpResponse:
    now = timezone.now()
    in_force = selectors.freezes_in_force(now)
    windows = selectors.windows_in_force()
    rules = selectors.rules_now(now, freezes=in_force, windows=windows)
    overrides = (
        RolloutEvent.objects.filter(kind=RolloutEventKind.OVERRIDE)
        .select_related("rollout__source")
        .defer(*Source.related_bulk("rollout__source"))
        .order_by("-id")[:OVERRIDES_SHOWN]
    )
    context = {
        "freezes": in_force,
        "history": selectors.freeze_history(),
        "windows": [_window_row(window, rules) for window in windows],
        "overrides": list(overrides),
        "can_manage": can_manage(request.user),
        "freeze_form": forms_shown.get("freeze_form") or FreezeForm(),
        "window_form": forms_shown.get("window_form") or WindowForm(),
        "source_names": list(Source.objects.order_by("name").values_list("name", flat=True)[:1000]),
    }
    status = 400 if any(form.errors for form in forms_shown.values()) else 200
    return render(request, "dashboard/windows.html", context, status=status)


@login_required
@permission_required("gitops.view_freeze", raise_exception=True)
def windows_page(request: HttpRequest) -> HttpResponse:
    return _page(request)


def _back(request: HttpRequest) -> HttpResponse:
    """To the page the form was on (a source's page, or this one)."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return redirect(target)
    return redirect("dashboard:windows")


@login_required
@require_POST
def freeze_create(request: HttpRequest) -> HttpResponse:
    form = FreezeForm(request.POST)
    if not can_manage(request.user):
        raise PermissionDenied("you may not freeze sources")
    if not form.is_valid():
        return _page(request, freeze_form=form)
    data = form.cleaned_data
    try:
        freeze = freezes.freeze_set(
            data["source"],
            until=data["until"],
            reason=data["reason"],
            user=request.user,  # type: ignore[arg-type]
        )
    except freezes.FreezeError as exc:
        form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        return _page(request, freeze_form=form)
    scope = freeze.source.name if freeze.source else "every source"
    messages.success(request, f"Froze {scope} until {freeze.until:%Y-%m-%d %H:%M} UTC.")
    return _back(request)


@login_required
@require_POST
def freeze_lift(request: HttpRequest) -> HttpResponse:
    if not can_manage(request.user):
        raise PermissionDenied("you may not unfreeze sources")
    freeze_id = whole_number(request.POST.get("freeze", ""), maximum=2**63 - 1)  # PostgreSQL's bigint
    if freeze_id is not None:  # a row's button: that freeze alone
        lifted = freezes.freeze_lift(None, user=request.user, freeze_id=freeze_id)  # type: ignore[arg-type]
        shown = lifted[0].source.name if lifted and lifted[0].source else "every source"
        messages.success(
            request, f"Lifted the freeze of {shown}." if lifted else "That freeze is over already."
        )
        return _back(request)
    name = request.POST.get("source", "").strip()
    source = Source.objects.filter(name=name).first() if name else None
    if name and source is None:
        messages.error(request, f"no source named {name!r}")
        return _back(request)
    lifted = freezes.freeze_lift(source, user=request.user)  # type: ignore[arg-type]
    scope = source.name if source else "every source"
    messages.success(request, f"Lifted {len(lifted)} freeze{'s' if len(lifted) != 1 else ''} of {scope}.")
    return _back(request)


@login_required
@require_POST
def window_create(request: HttpRequest) -> HttpResponse:
    form = WindowForm(request.POST)
    if not request.user.has_perm(freezes.MANAGE_WINDOWS):
        raise PermissionDenied("you may not manage sync windows")
    if not form.is_valid():
        return _page(request, window_form=form)
    data = form.cleaned_data
    try:
        window = freezes.window_add(
            kind=data["kind"],
            schedule_text=data["schedule"],
            duration=data["duration"],
            sources=data["sources"].split(","),
            manual_sync=data["manual_sync"],
            time_zone=data["time_zone"].strip() or "UTC",
            user=request.user,  # type: ignore[arg-type]
        )
    except freezes.FreezeError as exc:
        form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        return _page(request, window_form=form)
    messages.success(request, f"Added sync window {window.pk}: {window}.")
    return redirect("dashboard:windows")


@login_required
@require_POST
def window_delete(request: HttpRequest, window_id: int) -> HttpResponse:
    if not request.user.has_perm("gitops.delete_syncwindow"):
        raise PermissionDenied("you may not manage sync windows")
    try:
        window = freezes.window_remove(window_id, user=request.user)  # type: ignore[arg-type]
    except freezes.FreezeError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Removed sync window {window.pk}.")
    return redirect("dashboard:windows")
