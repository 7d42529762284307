"""Who an object's content belongs to, from the writes the change history records (``_holder``):
what an owed rollback restores only when it is still the rolling-back rollout's."""

from __future__ import annotations

import pytest

from gitops.rollout.rollback import _holder

A, B, C = 1, 2, 3


@pytest.mark.parametrize(
    ("history", "holder"),
    [
        ([], None),
        ([(A, False)], A),
        ([(A, False), (A, False)], A),  # a later step of the same rollout
        ([(A, False), (A, True)], None),  # A's own rollback: what came before A
        ([(A, False), (B, False)], B),  # a newer rollout wrote after A
        # A newer rollout of the same commit, as when a branch moves back to it: still not A's.
        ([(A, False), (C, False)], C),
        # B came and was rolled back: the object is handed back to A.
        ([(A, False), (B, False), (B, True)], A),
        # B rolled back twice over (a step's refusal, then the owed rest): still A's.
        ([(A, False), (B, False), (B, True), (B, True)], A),
        # B, then C on top, and C rolled back: B's again.
        ([(A, False), (B, False), (C, False), (C, True)], B),
        # B and C both rolled back, newest first: A's again.
        ([(A, False), (B, False), (C, False), (C, True), (B, True)], A),
        # A rollback whose rollout wrote nothing after A's first change restores what predates A.
        ([(A, False), (B, True)], None),
        # A removal (no rollout) wrote last.
        ([(A, False), (None, False)], None),
    ],
)
def test_the_holder_is_the_last_write_that_a_rollback_did_not_take_back(history, holder):
    assert _holder(history) == holder
