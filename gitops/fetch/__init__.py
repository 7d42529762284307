"""Fetch: the Git side of the pipeline. A bare mirror per source, credentials by reference, revisions."""

from gitops.fetch.credentials import Credentials, resolve_credentials
from gitops.fetch.git import MIRROR_REF_PREFIX, build_fetch_invocation, classify_git_error
from gitops.fetch.mirror import CommitInfo, FetchResult, GitMirror, ObjectNotFoundError, TreeFile
from gitops.redaction import redact_url

__all__ = [
    "MIRROR_REF_PREFIX",
    "CommitInfo",
    "Credentials",
    "FetchResult",
    "GitMirror",
    "ObjectNotFoundError",
    "TreeFile",
    "build_fetch_invocation",
    "classify_git_error",
    "redact_url",
    "resolve_credentials",
]
