"""Where a live-cache floor comes from: the resourceVersion in a server-side apply's answer, found in the
text without parsing it (``resource_version_in``), and only where the apiserver puts it."""

from __future__ import annotations

import json

import pytest

from gitops.cluster.client import resource_version_in


def answer(*, name: str = "app", data: dict | None = None, labels: dict | None = None) -> dict:
    """A ConfigMap as kube-apiserver answers an apply: its fields in the order Go encodes them."""
    return {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": "4f1e8c7a-2b1d-4a53-9d0e-77c0c5d2c9e1",
            "resourceVersion": "48213",
            "creationTimestamp": "2026-12-05T04:00:00Z",
            "labels": labels or {"sluice.dev/source": "src"},
            "annotations": {"sluice.dev/content-hash": "a" * 32},
            "managedFields": [{"manager": "sluice", "operation": "Apply", "fieldsV1": {"f:data": {}}}],
        },
        "data": data or {"LOG_LEVEL": "info"},
    }


def compact(document: dict, **options: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), **options).encode()  # type: ignore[arg-type]


def test_the_version_of_an_apiservers_answer_is_found():
    assert resource_version_in(compact(answer())) == "48213"


def test_a_label_or_a_data_key_named_resource_version_is_not_taken_for_it():
    tricky = answer(
        labels={"resourceVersion": "1"},
        data={"resourceVersion": "2", "quoted": 'say "resourceVersion":"3"'},
    )
    assert resource_version_in(compact(tricky)) == "48213"


@pytest.mark.parametrize(
    "text",
    [
        # A proxy that sorts keys puts data and labels first: nothing is taken, rather than a wrong one.
        compact(answer(data={"resourceVersion": "2"}), sort_keys=True),
        compact({**answer(), "metadata": {**answer()["metadata"], "resourceVersion": "12a"}}),
        json.dumps(answer(), indent=2).encode(),  # pretty-printed: spaces the search does not allow
        compact({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
        b"",
        b"not json",
    ],
    ids=["sorted-keys", "not-a-number", "pretty", "no-version", "empty", "not-json"],
)
def test_anything_else_gives_no_version_so_no_floor_is_set(text: bytes):
    assert resource_version_in(text) == ""
