"""Sources, as an administrator manages them: register one, and change what it is allowed.

What an administrator allows a source (namespaces, analysis URLs, an approval
floor, notification URLs) bounds what its repository can do: the repository's
own policy can narrow it, never widen it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from django.db import transaction

from gitops import caches
from gitops.desired.policy import Pause, namespace_glob_problem, steps_from_json
from gitops.desired.scope import url_prefix_problem
from gitops.errors import PermanentError
from gitops.models import MAX_REQUIRED_APPROVALS, Rollout, Source
from gitops.redaction import redact_url
from gitops.vocabulary import Waiting


def source_add(
    *,
    name: str,
    url: str,
    allowed_namespaces: Sequence[str],
    branch: str = "main",
    path: str = "",
    poll_interval: timedelta = timedelta(seconds=60),
    credentials_ref: str = "",
    commit_url_template: str = "",
    notify_urls: Sequence[str] = (),
    analysis_url_prefixes: Sequence[str] = (),
    required_approvals: int = 0,
) -> Source:
    """Registers a source. Its scope is an administrator's to give: without namespaces, nowhere."""
    if redact_url(url) != url:
        raise PermanentError("the URL must not contain credentials; use --credentials env:VAR or file:/path")
    if not allowed_namespaces:
        raise PermanentError("a source needs at least one allowed namespace glob (--allow-namespace)")
    source = Source(
        name=name,
        url=url,
        branch=branch,
        path=path.strip("/"),
        poll_interval=poll_interval,
        credentials_ref=credentials_ref,
        commit_url_template=commit_url_template,
    )
    _set_scope(
        source,
        allowed_namespaces=allowed_namespaces,
        analysis_url_prefixes=analysis_url_prefixes,
        required_approvals=required_approvals,
        notify_urls=notify_urls,
    )
    source.full_clean()
    source.save()
    return source


def source_update_scope(
    source: Source,
    *,
    allowed_namespaces: Sequence[str] | None = None,
    analysis_url_prefixes: Sequence[str] | None = None,
    required_approvals: int | None = None,
    notify_urls: Sequence[str] | None = None,
) -> Source:
    """Changes what an administrator allows a source; what is not given stays as it is."""
    raised = required_approvals is not None and required_approvals > source.required_approvals
    _set_scope(
        source,
        allowed_namespaces=source.allowed_namespaces if allowed_namespaces is None else allowed_namespaces,
        analysis_url_prefixes=(
            source.analysis_url_prefixes if analysis_url_prefixes is None else analysis_url_prefixes
        ),
        required_approvals=source.required_approvals if required_approvals is None else required_approvals,
        notify_urls=source.notify_urls if notify_urls is None else notify_urls,
    )
    source.full_clean()
    source.save()
    caches.drop(source.pk)
    if raised:
        _gate_active_rollouts(source)
    return source


def _gate_active_rollouts(source: Source) -> None:
    """A raised approval floor holds rollouts already under way too: each stops at its next step."""
    with transaction.atomic():
        for rollout in Rollout.objects.select_for_update().filter(
            source=source, phase__in=Rollout.ACTIVE_PHASES
        ):
            steps = steps_from_json(rollout.steps)
            at_gate = rollout.phase == Rollout.Phase.PAUSED and rollout.waiting_for == Waiting.APPROVAL
            position = rollout.step_index + 1
            if not at_gate and not (position < len(steps) and steps[position] == Pause(None)):
                steps = (*steps[:position], Pause(None), *steps[position:])
            Rollout.objects.filter(pk=rollout.pk).update(
                steps=[step.as_json() for step in steps],
                approvals_required=max(rollout.approvals_required, source.required_approvals),
                forbid_self_approval=True,
            )


def _set_scope(
    source: Source,
    *,
    allowed_namespaces: Sequence[str],
    analysis_url_prefixes: Sequence[str],
    required_approvals: int,
    notify_urls: Sequence[str],
) -> None:
    for pattern in allowed_namespaces:
        if problem := namespace_glob_problem(pattern):
            raise PermanentError(f"--allow-namespace: {problem}")
    for prefix in analysis_url_prefixes:
        if problem := url_prefix_problem(prefix):
            raise PermanentError(f"--allow-analysis-url: {problem}")
    for url in notify_urls:
        if problem := url_prefix_problem(url):
            raise PermanentError(f"--notify: {problem}")
    if not 0 <= required_approvals <= MAX_REQUIRED_APPROVALS:
        raise PermanentError(f"--require-approvals must be from 0 to {MAX_REQUIRED_APPROVALS}")
    source.allowed_namespaces = list(dict.fromkeys(allowed_namespaces))
    source.analysis_url_prefixes = list(dict.fromkeys(analysis_url_prefixes))
    source.required_approvals = required_approvals
    source.notify_urls = list(dict.fromkeys(notify_urls))
