"""``row_create_once``: one INSERT, a duplicate answered None, any other refusal raised (real PostgreSQL)."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from gitops.models import WebhookDelivery
from gitops.record.bulk import row_create_once

pytestmark = pytest.mark.django_db(transaction=True)


def _delivery(**fields: object) -> dict[str, object]:
    return {
        "delivery_id": "d-1",
        "provider": "generic",
        "event": "push",
        "ref": "refs/heads/main",
        "commit": "a" * 40,
        "outcome": WebhookDelivery.Outcome.ACCEPTED,
        "reason": "",
        **fields,
    }


def test_a_duplicate_is_none_outside_and_inside_a_transaction_and_breaks_neither(make_source):
    source = make_source()
    first = row_create_once(WebhookDelivery.objects, **_delivery(source=source))
    assert first is not None and first.pk is not None

    assert row_create_once(WebhookDelivery.objects, **_delivery(source=source)) is None
    with transaction.atomic():
        assert row_create_once(WebhookDelivery.objects, **_delivery(source=source)) is None
        # The caller's transaction goes on: the refusal was confined to a savepoint.
        other = row_create_once(WebhookDelivery.objects, **_delivery(source=source, delivery_id="d-2"))
        assert other is not None
    assert set(WebhookDelivery.objects.values_list("delivery_id", flat=True)) == {"d-1", "d-2"}


def test_a_refusal_other_than_a_duplicate_is_raised_not_taken_for_an_existing_row(make_source):
    make_source()
    with pytest.raises(IntegrityError):
        row_create_once(WebhookDelivery.objects, **_delivery(source_id=-1))  # no such source
    assert not WebhookDelivery.objects.exists()
