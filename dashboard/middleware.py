"""Requests no page can answer, refused before any view runs, and a broker that refused a view's task."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse, QueryDict
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from gitops import schedule

log = logging.getLogger("dashboard")

REFUSAL = "a NUL character (%00) in the address, the query string or the form"
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


class RefuseNulMiddleware:
    """A NUL in the path, the query string or a submitted form is a 400.

    PostgreSQL keeps no U+0000 in text: a filter, a name or a comment holding one made the database
    refuse the statement, a 500 for anybody's odd link (``/?q=%00``, ``/sources/%00/``) or form.
    JSON bodies are checked by the API's schemas; the webhook's body is the Git server's, read raw.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path or _holds_nul(request.GET) or _form_holds_nul(request):
            if request.path.startswith("/api/"):
                return JsonResponse({"detail": REFUSAL}, status=400)
            return HttpResponse(REFUSAL, status=400, content_type="text/plain; charset=utf-8")
        return self.get_response(request)


def _holds_nul(query: QueryDict) -> bool:
    return any("\x00" in key or "\x00" in value for key, values in query.lists() for value in values)


def _form_holds_nul(request: HttpRequest) -> bool:
    # The CSRF check parses the same form right after this; the webhook's body is left unread, and so is
    # the API's: its schemas refuse a NUL, and a form parsed here consumed the stream its parser reads
    # (a multipart POST to any endpoint was a 500).
    if request.method != "POST" or request.content_type not in _FORMS:
        return False
    if "/webhooks/" in request.path or request.path.startswith("/api/"):
        return False
    return _holds_nul(request.POST)


BROKER_REFUSED = {
    "sync": (
        "The sync could not be queued: the message broker did not take it. What this action decided before"
        " it (an approval, an abort, a resume) is saved, and is carried out once the broker answers: do not"
        " do it again."
    ),
    "preview": "The preview could not be queued: the message broker did not take it. Try again in a moment.",
}


class TaskNotQueuedMiddleware:
    """A page's action whose task the broker refused (a sync, a preview), after what the action decided
    was saved: said on the page the person came from, where it was a bare 500 (before 2026-12-07) that
    left them to guess whether a source they created, resumed or approved existed. The JSON API answers
    503 itself (``dashboard.api.not_queued``)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, schedule.TaskNotQueued):
            return None
        log.warning("%s", exception)
        what = "sync" if isinstance(exception, schedule.SyncNotQueued) else "preview"
        messages.error(request, BROKER_REFUSED[what])
        back = request.headers.get("Referer", "")
        if not url_has_allowed_host_and_scheme(
            back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            back = reverse("dashboard:overview")
        if request.headers.get("HX-Request"):
            # htmx swaps nothing on a 5xx, but follows HX-Redirect whatever the status: the page is
            # loaded again, with the message.
            response = HttpResponse(status=503)
            response["HX-Redirect"] = back
            response["Retry-After"] = "5"
            return response
        return HttpResponseRedirect(back, status=303)
