"""A pass's claim and its renewals wait for the disk; only a claim's end may be lost in a crash.

The next pass's grace counts from the last renewal it can read. Renewals come only with writes, so the
one before a lost renewal could be tens of seconds older: a quick renewal lost in a PostgreSQL crash let
the next pass take over while the lost pass's writes still landed. (The crash itself is not run here:
the stack's PostgreSQL runs without fsync; this guards the statements' text.)
"""

from __future__ import annotations

from gitops import locks


def test_the_claim_and_its_renewals_are_committed_durably():
    assert "synchronous_commit" not in locks._CLAIM
    assert "synchronous_commit" not in locks._RENEW


def test_a_claims_end_may_be_committed_quickly():
    assert locks._END.startswith(locks._QUICKLY)
