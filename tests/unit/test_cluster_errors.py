"""How kube-apiserver failures map onto retryable and permanent errors."""

import json

import pytest
from kubernetes.client.exceptions import ApiException

from gitops.cluster.client import FieldConflictError, NotFoundError, _translate
from gitops.errors import PermanentError, TemporaryError


def api_exception(status: int, message: str = "boom", headers: dict | None = None) -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body = json.dumps({"kind": "Status", "message": message})
    exc.headers = headers or {}
    return exc


@pytest.mark.parametrize("status", [0, 429, 500, 502, 503, 504])
def test_server_side_and_throttling_failures_are_temporary(status):
    error = _translate(api_exception(status))
    assert isinstance(error, TemporaryError)


def test_retry_after_header_sets_the_delay():
    error = _translate(api_exception(429, headers={"Retry-After": "7"}))
    assert isinstance(error, TemporaryError)
    assert error.delay == 7.0


@pytest.mark.parametrize(
    "header, delay",
    [("31536000", 300.0), ("9" * 5000, None), ("²", None), ("Wed, 21 Oct 2026 07:28:00 GMT", None)],
)
def test_a_retry_after_past_five_minutes_or_unreadable_is_not_obeyed(header, delay):
    error = _translate(api_exception(503, headers={"Retry-After": header}))
    assert isinstance(error, TemporaryError)
    assert error.delay == delay


@pytest.mark.parametrize("status", [400, 401, 403, 422])
def test_client_errors_are_permanent(status):
    error = _translate(api_exception(status, "configmaps is forbidden"))
    assert isinstance(error, PermanentError)
    assert not isinstance(error, TemporaryError)
    assert "configmaps is forbidden" in str(error)


def test_a_409_from_server_side_apply_is_a_field_conflict():
    error = _translate(api_exception(409, "Apply failed with 1 conflict"), applying=True)
    assert isinstance(error, FieldConflictError)
    assert "1 conflict" in str(error)


def test_a_409_outside_apply_is_a_race_worth_retrying():
    assert isinstance(_translate(api_exception(409)), TemporaryError)


def test_not_found_is_its_own_permanent_error():
    assert isinstance(_translate(api_exception(404)), NotFoundError)


def test_a_body_that_is_not_json_falls_back_to_the_reason():
    exc = ApiException(status=500, reason="Internal Server Error")
    exc.body = "<html>oops</html>"
    assert "Internal Server Error" in str(_translate(exc))


def test_a_cluster_that_does_not_answer_reads_the_same_every_time():
    """A reason stable across requests (no URL, no object address): a paused rollout's timeline gets one
    event per reason, not one per retry."""
    import urllib3

    from gitops.cluster.client import _network_reason

    refused = urllib3.exceptions.NewConnectionError(
        None,
        "HTTPSConnection(host='127.0.0.1', port=1): Failed to establish a new connection: [Errno 111] "
        "Connection refused",
    )
    for path in ("/api/v1/namespaces/a/configmaps", "/api/v1/namespaces/b/configmaps"):
        wrapped = urllib3.exceptions.MaxRetryError(None, path, reason=refused)
        assert _network_reason(wrapped) == "connection refused"
    timed_out = urllib3.exceptions.ReadTimeoutError(None, "/x", "Read timed out. (read timeout=30)")
    assert _network_reason(urllib3.exceptions.MaxRetryError(None, "/x", reason=timed_out)) == "read timed out"
