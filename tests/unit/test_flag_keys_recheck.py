"""A revision's flag keys against other sources' are asked until it is accepted, at every pass while it is
rejected, whatever this process remembers of it: the other source may take a key out at any time. Real
git, read as the source's mirror; the database's answers (which keys other sources publish, the rows
written) stubbed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from gitops import caches
from gitops.desired.errors import RevisionRejected
from gitops.desired.flag_keys import PublishedElsewhere, flag_key_hash
from gitops.fetch import revisions
from gitops.fetch.mirror import GitMirror
from gitops.models import Revision, Source
from tests.unit.test_revision_shapes import Repo

SOURCE_ID = 990_002  # the per-process caches are keyed by it: dropped after each test
KNOWN = frozenset({settings.SLUICE_CLUSTER_NAME})
POLICY = b"targets:\n  namespaces: [team-a]\nflags:\n  namespace: flags\nallowedNamespaces: [team-a, flags]\n"
APP = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  V: '1'\n"
SWITCH = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"}
THERE = PublishedElsewhere("shop", settings.SLUICE_CLUSTER_NAME, "flags", "new-checkout")


class Database:
    """What the glue asks of and writes to the database, stubbed: the other sources' keys, and each
    rejection and validation it records."""

    def __init__(self) -> None:
        self.published: list[PublishedElsewhere] = []
        self.asked: list[tuple[int, frozenset[tuple[str, str]], set[str]]] = []
        self.rejected: list[RevisionRejected] = []
        self.valid: list[int] = []

    def published_by_others(self, source_id, places, key_hashes) -> list[PublishedElsewhere]:
        self.asked.append((source_id, frozenset(places), set(key_hashes)))
        return list(self.published)


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    stub = Database()
    monkeypatch.setattr(revisions, "flag_keys_published_by_others", stub.published_by_others)
    rejected = lambda source, revision, found: stub.rejected.append(found)  # noqa: E731
    monkeypatch.setattr(revisions, "revision_reject", rejected)
    monkeypatch.setattr(revisions, "_VALID", stub.valid.append)
    monkeypatch.setattr(revisions, "known_cluster_names", lambda: KNOWN)  # previews ask the database
    caches.drop(SOURCE_ID)
    yield stub
    caches.drop(SOURCE_ID)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repo:
    made = Repo(tmp_path / "mirror.git")
    monkeypatch.setattr(revisions, "mirror_for", lambda source: GitMirror(made.path))
    return made


def source() -> Source:
    return Source(
        pk=SOURCE_ID,
        name="payments",
        url="file:///nowhere",
        allowed_namespaces=["team-*", "flags"],
        target_clusters=[settings.SLUICE_CLUSTER_NAME],
    )


def commit(repo: Repo, *, flags: bool = True) -> str:
    files = {"sluice.yaml": POLICY, "configmaps": repo.tree({"app.yaml": APP})}
    if flags:
        document = json.dumps({"flags": {"new-checkout": SWITCH}}, indent=2).encode()
        files["flags"] = repo.tree({"payments.json": document})
    return repo.commit(repo.tree(files))


def desired(revision: Revision):
    return revisions.revision_desired_state(source(), revision, known_clusters=KNOWN)


def test_a_revision_is_asked_until_it_is_accepted_and_again_at_each_pass_while_rejected(
    repo: Repo, database: Database
) -> None:
    place = (settings.SLUICE_CLUSTER_NAME, "flags")
    database.published.append(THERE)
    revision = Revision(pk=1, commit=commit(repo), outcome=Revision.Outcome.PENDING)
    assert desired(revision) is None
    (rejected,) = database.rejected
    assert [str(error) for error in rejected.errors] == [
        f"flags/payments.json:3: flags.new-checkout: the flag 'new-checkout' is also published into "
        f"{place[0]}/flags by source 'shop': flagd serves every flag set of a namespace together, merged "
        "by key, and of two definitions the one it read last, so one key belongs to one source; take it "
        "out of one of them, or publish into another flags namespace"
    ]
    assert revision.outcome == Revision.Outcome.REJECTED
    assert database.asked == [(SOURCE_ID, frozenset({place}), {flag_key_hash("new-checkout")})]

    # Rejected as it was: nothing written again, at any pass while it stands.
    assert desired(revision) is None and desired(revision) is None
    assert len(database.rejected) == 1
    assert len(database.asked) == 3, "one question a pass"

    database.published.clear()
    assert desired(revision) is not None, "the other source took it out: not frozen as rejected"
    assert revision.outcome == Revision.Outcome.VALID and database.valid == [1]


class Rollouts:
    """``Rollout.objects`` as the check asks it: the source's latest rollout, as (pk, revision, phase),
    None when it has none, and the directory it read (``path``: None for a rollout an older worker
    started); ``intents`` says whether an active one has begun writing."""

    def __init__(self) -> None:
        self.latest: tuple[int, int, str] | None = None
        self.path: str | None = ""
        self.asked = 0

    def filter(self, **conditions: object) -> Rollouts:
        self.asked += 1
        return self

    def order_by(self, *fields: str) -> Rollouts:
        return self

    def values_list(self, *fields: str, flat: bool = False) -> Rollouts:
        return self

    def first(self) -> tuple[int, int, str, str | None] | None:
        return None if self.latest is None else (*self.latest, self.path)


class Intents:
    """``ApplyIntent.objects``: whether the active rollout has written."""

    def __init__(self) -> None:
        self.written = False

    def filter(self, **conditions: object) -> Intents:
        return self

    def exists(self) -> bool:
        return self.written


def test_a_revision_that_went_out_is_not_asked_again_and_one_held_back_is(
    repo: Repo, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catalog that lags what the clusters serve (rows written after a step's applies) rejected, and
    rolled back, a revision that went out first. One valid but held back (a freeze, a window, a queue) has
    not: another source may have started publishing its key."""
    rollouts, intents = Rollouts(), Intents()
    monkeypatch.setattr(revisions.Rollout, "objects", rollouts)
    monkeypatch.setattr(revisions.ApplyIntent, "objects", intents)
    revision = Revision(pk=1, commit=commit(repo), outcome=Revision.Outcome.PENDING)
    assert desired(revision) is not None
    assert revision.outcome == Revision.Outcome.VALID and len(database.asked) == 1
    database.published.append(THERE)
    assert desired(revision) is None, "held back, not gone out: asked again, and rejected"
    assert len(database.asked) == 2 and len(database.rejected) == 1

    database.published.clear()
    assert desired(revision) is not None and revision.outcome == Revision.Outcome.VALID
    rollouts.latest, intents.written = (7, 1, "Progressing"), True  # its rollout has begun writing
    database.published.append(THERE)
    for outcome in (Revision.Outcome.VALID, Revision.Outcome.APPLIED):
        revision.outcome = outcome
        assert desired(revision) is not None
    assert len(database.asked) == 3 and len(database.rejected) == 1
    assert rollouts.asked == 3, "asked while held back, and at each pass while its rollout runs"
    rollouts.latest = (7, 1, "Completed")
    for _ in range(3):
        assert desired(revision) is not None
    assert rollouts.asked == 4, "found completed once, then remembered"


def test_a_revision_rolled_back_or_gone_back_to_is_asked_again(
    repo: Repo, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its keys left the catalog with its rollback, or with the later commit's rollout: another source
    may publish one since. Neither was asked, and published the key beside that source's."""
    rollouts, intents = Rollouts(), Intents()
    monkeypatch.setattr(revisions.Rollout, "objects", rollouts)
    monkeypatch.setattr(revisions.ApplyIntent, "objects", intents)
    database.published.append(THERE)
    for latest in ((7, 1, "Aborted"), (7, 1, "Failed"), (8, 2, "Completed"), (7, 1, "Progressing")):
        rollouts.latest = latest  # rolled back; the branch went back from revision 2; not yet writing
        revision = Revision(pk=1, commit=commit(repo), outcome=Revision.Outcome.APPLIED)
        assert desired(revision) is None, latest
    assert len(database.asked) == 4


def test_a_revision_whose_completed_rollout_read_another_directory_is_asked_again(
    repo: Repo, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An administrator moved the source to another --path at the same commit: other content, whose
    rollout is still to start, and whose flag keys no check has seen. One an older worker started (no
    directory recorded) is taken as the source's."""
    rollouts, intents = Rollouts(), Intents()
    monkeypatch.setattr(revisions.Rollout, "objects", rollouts)
    monkeypatch.setattr(revisions.ApplyIntent, "objects", intents)
    revision = Revision(pk=1, commit=commit(repo), outcome=Revision.Outcome.APPLIED)
    rollouts.latest, rollouts.path = (7, 1, "Completed"), "staging"
    database.published.append(THERE)
    assert desired(revision) is None, "read from the repository's root now, not from staging"
    assert len(database.asked) == 1

    rollouts.path, revision.outcome = None, Revision.Outcome.APPLIED
    assert desired(revision) is not None, "no directory recorded: the source's, and gone out"
    assert len(database.asked) == 1


def test_a_revision_rejected_for_a_key_is_not_parsed_again_at_each_pass(
    repo: Repo, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    database.published.append(THERE)
    listings: list[str] = []
    real_listing = revisions._listing
    monkeypatch.setattr(
        revisions,
        "_listing",
        lambda mirror, at, *rest: listings.append(at) or real_listing(mirror, at, *rest),
    )
    revision = Revision(pk=1, commit=commit(repo), outcome=Revision.Outcome.PENDING)
    for _ in range(3):
        assert desired(revision) is None
    assert len(listings) == 1 and len(database.asked) == 3
    # Nor is a row another process rejected for it (outcome and errors read from the database).
    stored = Revision(pk=1, commit=revision.commit, outcome=revision.outcome, errors=revision.errors)
    assert desired(stored) is None and len(database.rejected) == 1 and len(listings) == 1


def test_a_revision_without_flag_sets_asks_nothing(repo: Repo, database: Database) -> None:
    database.published.append(THERE)
    revision = Revision(pk=1, commit=commit(repo, flags=False), outcome=Revision.Outcome.VALID)
    assert desired(revision) is not None and desired(revision) is not None
    assert database.asked == []


def test_a_preview_rejects_it_as_a_sync_does(repo: Repo, database: Database) -> None:
    at = commit(repo)
    with GitMirror(repo.path) as mirror:
        assert revisions._load(mirror, source(), at) is not None
        database.published.append(THERE)
        with pytest.raises(RevisionRejected) as rejected:
            revisions._load(mirror, source(), at)
    assert [error.field for error in rejected.value.errors] == ["flags.new-checkout"]
    assert database.rejected == [], "a preview records nothing"
