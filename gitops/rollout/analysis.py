"""Analysis checks a rollout step runs before it goes on. A registry keyed by name.

``http``: POST a JSON payload (source, rollout, revision, step, weight) to a
URL; any 2xx passes, anything else or a timeout fails. The URL comes from the
repository, so it is checked again here against the prefixes an administrator
allows the source now (they may have changed since the revision was
validated), redirects are never followed, and the answer's body is never kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gitops import outbound
from gitops.desired.policy import Analysis
from gitops.desired.scope import AdminScope
from gitops.redaction import url_without_query

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisResult:
    passed: bool
    detail: str


def http_check(step: Analysis, payload: Mapping[str, Any], scope: AdminScope) -> AnalysisResult:
    if problem := scope.analysis_url_problem(step.url):
        return AnalysisResult(False, f"not called: {problem}")
    answer = outbound.post(
        step.url, json.dumps(payload).encode(), content_type="application/json", timeout=step.timeout_seconds
    )
    return AnalysisResult(answer.ok, answer.describe(url_without_query(step.url)))


CHECKS: dict[str, Callable[[Analysis, Mapping[str, Any], AdminScope], AnalysisResult]] = {"http": http_check}


def run_analysis(
    step: Analysis, payload: Mapping[str, Any], scope: AdminScope, kind: str = "http"
) -> AnalysisResult:
    result = CHECKS[kind](step, payload, scope)
    log.info("analysis %s: %s", "passed" if result.passed else "failed", result.detail)
    return result
