"""Which revisions of a remote a preview may ask for (``gitops diff NAME --revision REF``). Pure.

A revision is named by one of a few ref forms, or by a commit's hex id; anything else is refused
before git runs, so that what reaches ``git fetch`` is a refspec this module built:

- ``refs/heads/NAME`` and ``refs/tags/NAME``: a branch or a tag;
- ``refs/pull/N/head``: a pull request's head (GitHub, Gitea, Forgejo, Bitbucket Server);
- ``refs/merge-requests/N/head``: a merge request's head (GitLab);
- a commit id, 7 to 64 hex digits. A full one (40, or 64 for SHA-256) is fetched when the mirror
  lacks it; an abbreviated one can only name a commit the mirror already holds.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from enum import StrEnum

from gitops.errors import PermanentError

MAX_REVISION_LENGTH = 256
# Fetched revisions are held here for the moment a preview reads them, never under the
# followed branch's ref (gitops.fetch.git.MIRROR_REF_PREFIX), which only a sync moves.
PREVIEW_REF_PREFIX = "refs/sluice/previews/"
# How long a preview may read and plan its revision once fetched, on top of its fetch's time limit:
# far beyond the plan's own bounds (the clusters' list deadline, a connect and a read per cluster),
# because a ref held too long costs next to nothing (git's gc keeps unreachable objects two weeks
# anyway) while one dropped under a live preview fails it.
PREVIEW_READ_SECONDS = 600
FULL_OBJECT_ID_LENGTHS = (40, 64)
ACCEPTED_FORMS = (
    "refs/heads/NAME, refs/tags/NAME, refs/pull/N/head, refs/merge-requests/N/head "
    "or a commit SHA (7 to 64 hex digits)"
)

_OBJECT_ID = re.compile(r"[0-9a-fA-F]{7,64}")
_PREVIEW_REF_NAME = re.compile(r"([0-9]{1,12})-([0-9]{1,12})-[0-9a-f]{32}")
_REVIEW_HEAD = re.compile(r"refs/(pull|merge-requests)/([1-9][0-9]{0,9})/head")
_NAMED = re.compile(r"refs/(heads|tags)/(.+)")
# What git check-ref-format refuses anywhere in a name: control characters, space, ~ ^ : ? * [ \ and DEL.
_FORBIDDEN_CHARACTERS = re.compile(r"[\x00-\x20~^:?*\[\\\x7f]")


class RevisionKind(StrEnum):
    BRANCH = "branch"
    TAG = "tag"
    PULL_REQUEST = "pull-request"
    MERGE_REQUEST = "merge-request"
    COMMIT = "commit"


class InvalidRevision(PermanentError):
    """The text names no revision a preview may fetch; nothing was fetched."""


class RevisionNotFound(PermanentError):
    """The remote (or, for an abbreviated commit id, the mirror) has no such ref or commit."""


@dataclass(frozen=True)
class RequestedRevision:
    text: str  # as asked, normalised (a commit id in lower case)
    kind: RevisionKind

    @property
    def is_commit(self) -> bool:
        return self.kind is RevisionKind.COMMIT

    @property
    def is_full_commit(self) -> bool:
        return self.is_commit and len(self.text) in FULL_OBJECT_ID_LENGTHS

    def refspec(self, local_ref: str) -> str:
        """What ``git fetch`` gets: this ref (or commit) into ``local_ref``, forced."""
        return f"+{self.text}:{local_ref}"


@dataclass(frozen=True)
class PreviewRef:
    """A preview's ref, named ``refs/sluice/previews/<began>-<expires>-<token>`` (epoch seconds): its name
    alone tells whoever lists the mirror's refs whether its preview may still run, with no need to ask
    the worker that made it (on another host, or killed between its fetch and the ref's deletion)."""

    name: str
    began: int | None  # None: a name without times (an older Sluice's, or not Sluice's)
    expires: int | None

    @classmethod
    def new(cls, began: float, held_for: float) -> PreviewRef:
        """A ref for a preview that begins at ``began`` and may read its revision ``held_for`` seconds."""
        start, end = int(began), math.ceil(began + held_for)
        return cls(f"{PREVIEW_REF_PREFIX}{start}-{end}-{uuid.uuid4().hex}", start, end)

    @classmethod
    def parse(cls, name: str) -> PreviewRef:
        times = _PREVIEW_REF_NAME.fullmatch(name.removeprefix(PREVIEW_REF_PREFIX))
        if not name.startswith(PREVIEW_REF_PREFIX) or times is None:
            return cls(name, None, None)
        return cls(name, int(times.group(1)), int(times.group(2)))

    def live(self, now: float) -> bool:
        """Whether its preview may still be fetching or reading (False for a name without times)."""
        return self.expires is not None and now < self.expires


def parse_revision(text: str) -> RequestedRevision:
    """The revision ``text`` names, or ``InvalidRevision`` saying which forms are accepted."""
    cleaned = text.strip()
    if not cleaned:
        raise InvalidRevision(f"name a revision: {ACCEPTED_FORMS}")
    if len(cleaned) > MAX_REVISION_LENGTH:
        raise InvalidRevision(f"a revision is at most {MAX_REVISION_LENGTH} characters")
    if _OBJECT_ID.fullmatch(cleaned):
        return RequestedRevision(cleaned.lower(), RevisionKind.COMMIT)
    if review := _REVIEW_HEAD.fullmatch(cleaned):
        kind = RevisionKind.PULL_REQUEST if review.group(1) == "pull" else RevisionKind.MERGE_REQUEST
        return RequestedRevision(cleaned, kind)
    if (named := _NAMED.fullmatch(cleaned)) and _is_valid_ref_name(named.group(2)):
        kind = RevisionKind.BRANCH if named.group(1) == "heads" else RevisionKind.TAG
        return RequestedRevision(cleaned, kind)
    raise InvalidRevision(f"{_quoted(cleaned)} is not a revision Sluice can preview: {_hint(cleaned)}")


def _is_valid_ref_name(name: str) -> bool:
    """git check-ref-format's rules for the part after refs/heads/ or refs/tags/."""
    if _FORBIDDEN_CHARACTERS.search(name) or ".." in name or "@{" in name:
        return False
    if name.endswith((".", "/")):
        return False
    return all(
        component and not component.startswith(".") and not component.endswith(".lock")
        for component in name.split("/")
    )


def _hint(text: str) -> str:
    if not text.startswith("refs/") and _is_valid_ref_name(text):
        return f"use refs/heads/{text} for a branch or refs/tags/{text} for a tag"
    return f"use {ACCEPTED_FORMS}"


def _quoted(text: str) -> str:
    # Whatever was typed goes back into a message, bounded and with control characters escaped.
    return repr(text[:100] + ("…" if len(text) > 100 else ""))
