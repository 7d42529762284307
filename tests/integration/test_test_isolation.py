"""What one test leaves in this process does not decide the next one.

The two tests run in order, in one session (``--dist loadfile`` keeps a module whole): the first
leaves the default cluster remembered as unreachable, as a test whose cluster refused writes does;
the second must find it asked again. Before, ``make test`` under ``pytest -n 2`` failed eight tests of
``test_polling_and_scope.py`` run within 5 s of ``test_pending_writes_first.py``'s, each with the
refusal of a webhook that test had already removed."""

from __future__ import annotations

from gitops.cluster.clients import clients, default_cluster_name
from gitops.errors import TemporaryError


def test_a_test_leaves_its_cluster_remembered_as_unreachable():
    clients.mark_unreachable(default_cluster_name(), TemporaryError("failed calling webhook"))
    assert clients.recently_unreachable(default_cluster_name()) is not None


def test_the_next_test_asks_that_cluster_again():
    assert clients.recently_unreachable(default_cluster_name()) is None
