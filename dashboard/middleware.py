"""Requests no page can answer, refused before any view runs."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict

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
    # The CSRF check parses the same form right after this; the webhook's body is left unread.
    if request.method != "POST" or request.content_type not in _FORMS or "/webhooks/" in request.path:
        return False
    return _holds_nul(request.POST)
