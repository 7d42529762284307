"""HTTP calls Sluice makes to URLs it was given: analysis checks and notifications.

Such a URL points wherever its author wanted, so a call follows no redirect
(urllib would follow one to any host, turning a POST into a GET), waits a
bounded time, and keeps nothing of the answer but its status: a body from an
internal address must not reach events, pages, logs or notifications.
"""

from __future__ import annotations

import http.client
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import IO, Any

USER_AGENT = "sluice/1"
MAX_TIMEOUT_SECONDS = 30.0


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        # Returning None makes urllib hand the 3xx back as the answer instead of following it.
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


@dataclass(frozen=True)
class Answer:
    status: int  # 0 when there was no HTTP answer at all
    problem: str = ""  # why there was no answer: a timeout, a refused connection

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def describe(self, url: str) -> str:
        if self.problem:
            return f"{self.problem} ({url})"
        if 300 <= self.status < 400:
            return f"HTTP {self.status} from {url}: redirects are not followed"
        return f"HTTP {self.status} from {url}"


def post(url: str, body: bytes, *, content_type: str, timeout: float) -> Answer:
    """POSTs ``body``; the answer's status, or why there was none. Never raises for network trouble.

    ``timeout`` bounds the whole call, not each read: a server that trickles its
    answer a byte at a time is given up on all the same.
    """
    if not url.startswith(("http://", "https://")):
        return Answer(0, "not an http:// or https:// URL")
    timeout = min(max(timeout, 0.1), MAX_TIMEOUT_SECONDS)
    answers: list[Answer] = []
    call = threading.Thread(
        target=lambda: answers.append(_post(url, body, content_type, timeout)), name="outbound", daemon=True
    )
    call.start()
    call.join(timeout)
    # A trickling server keeps the thread until its socket times out; nobody waits for it.
    return answers[0] if answers else Answer(0, f"no answer within {timeout:g}s")


def _post(url: str, body: bytes, content_type: str, timeout: float) -> Answer:
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked by post()
        url, data=body, method="POST", headers={"Content-Type": content_type, "User-Agent": USER_AGENT}
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return Answer(int(response.status))
    except urllib.error.HTTPError as exc:
        _close(exc.fp)
        return Answer(int(exc.code))
    except TimeoutError:
        return Answer(0, f"no answer within {timeout:g}s")
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            return Answer(0, f"no answer within {timeout:g}s")
        detail = getattr(reason, "strerror", None) or type(reason).__name__
        return Answer(0, f"cannot reach the server: {detail}")


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        stream.close()
