"""Analysis checks a rollout step runs before it goes on. A registry keyed by name.

``http``: POST a JSON payload (source, rollout, revision, step, weight) to a
URL; any 2xx passes, anything else or a timeout fails.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gitops.desired.policy import Analysis

log = logging.getLogger(__name__)
MAX_DETAIL = 300


@dataclass(frozen=True)
class AnalysisResult:
    passed: bool
    detail: str


def http_check(step: Analysis, payload: Mapping[str, Any]) -> AnalysisResult:
    body = json.dumps(payload).encode()
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked when the policy is loaded
        step.url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "sluice-analysis/1"},
    )
    try:
        with urllib.request.urlopen(request, timeout=step.timeout_seconds) as response:  # noqa: S310
            status = int(response.status)
            text = response.read(MAX_DETAIL).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        text = exc.read(MAX_DETAIL).decode(errors="replace") if exc.fp else ""
        return AnalysisResult(False, f"HTTP {exc.code} from {step.url}: {text}".strip())
    except TimeoutError:
        return AnalysisResult(False, f"no answer from {step.url} within {step.timeout_seconds:g}s")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            return AnalysisResult(False, f"no answer from {step.url} within {step.timeout_seconds:g}s")
        return AnalysisResult(False, f"cannot reach {step.url}: {reason}")
    if 200 <= status < 300:
        return AnalysisResult(True, f"HTTP {status} from {step.url}")
    return AnalysisResult(False, f"HTTP {status} from {step.url}: {text}".strip())


CHECKS: dict[str, Callable[[Analysis, Mapping[str, Any]], AnalysisResult]] = {"http": http_check}


def run_analysis(step: Analysis, payload: Mapping[str, Any], kind: str = "http") -> AnalysisResult:
    result = CHECKS[kind](step, payload)
    log.info("analysis %s: %s", "passed" if result.passed else "failed", result.detail)
    return result
