"""Every malformed-input case through the pure loader: refused, naming the file (and line) at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitops.desired.errors import RevisionRejected, ValidationError
from gitops.desired.limits import DEFAULT_LIMITS, Limits
from gitops.desired.revision import ParseCache, load_revision
from tests.corpus import GENERATORS, MALFORMED, Case, all_cases, case_named, generated_cases, static_cases

CASES = all_cases(DEFAULT_LIMITS)


class Tree:
    """A revision as the mirror presents it: path -> blob id, sizes from the listing, and a reader
    that records which blobs were read."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.paths = {path: f"{index:040x}" for index, path in enumerate(sorted(files))}
        self.blobs = {self.paths[path]: content for path, content in files.items()}
        self.sizes = {path: len(content) for path, content in files.items()}
        self.read: list[str] = []

    def read_blobs(self, blob_ids: list[str]) -> dict[str, bytes]:
        self.read.extend(blob_ids)
        return {blob: self.blobs[blob] for blob in blob_ids}

    def path_of(self, blob: str) -> str:
        return next(path for path, known in self.paths.items() if known == blob)


def refuse(case: Case, limits: Limits = DEFAULT_LIMITS) -> tuple[list[ValidationError], Tree]:
    tree = Tree(case.revision())
    with pytest.raises(RevisionRejected) as rejected:
        load_revision(tree.paths, tree.read_blobs, sizes=tree.sizes, limits=limits, cache=ParseCache())
    return rejected.value.errors, tree


def test_the_corpus_holds_at_least_100_revisions_each_listed_in_its_readme():
    names = [case.name for case in CASES]
    assert len(names) >= 100
    assert len(set(names)) == len(names)
    readme = (MALFORMED / "README.md").read_text()
    assert [name for name in names if f"`{name}`" not in readme] == []
    directories = {path.name for path in MALFORMED.iterdir() if path.is_dir()}
    assert directories == {case.name for case in static_cases()}
    assert [case_named(name).name for name in GENERATORS] == list(GENERATORS)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_each_case_is_refused_naming_its_file_and_line(case: Case):
    errors, _ = refuse(case)

    matching = [
        error
        for error in errors
        if error.file == case.file and case.message in error.message and error.line == case.line
    ]
    assert matching, (
        f"{case.description}: expected {case.file}:{case.line} {case.message!r}, got "
        + "; ".join(str(error)[:200] for error in errors[:5])
    )
    assert len(errors) <= 101, "a report holds at most 100 errors and a line saying how many were left out"
    assert all(len(str(error)) < 1600 for error in errors), "messages quoting repository text are clipped"


@pytest.mark.parametrize("name", ["size-file-over-limit", "size-too-many-files", "size-revision-over-limit"])
def test_files_past_a_size_or_count_limit_are_refused_before_any_blob_is_read(name: str):
    (case,) = [case for case in CASES if case.name == name]
    _, tree = refuse(case)
    assert tree.read == []


def test_a_revision_without_listed_sizes_still_never_parses_an_oversized_file():
    (case,) = [case for case in CASES if case.name == "size-file-over-limit"]
    tree = Tree(case.revision())
    with pytest.raises(RevisionRejected) as rejected:
        load_revision(tree.paths, tree.read_blobs)  # no sizes: they are checked once read
    assert [error.file for error in rejected.value.errors] == ["configmaps/big.yaml"]


def test_the_generated_cases_follow_the_limits_an_administrator_sets():
    small = Limits(
        max_file_bytes=64 * 1024,
        max_files=50,
        max_revision_bytes=256 * 1024,
        max_file_nodes=2_000,
        max_revision_nodes=10_000,
        max_aliases=20,
        max_depth=10,
        max_objects=500,
        max_expanded_bytes=4 * 1024 * 1024,
    )
    for case in generated_cases(small):
        if case.name in (
            "configmap-over-1mib",
            "annotations-over-256kib",
            "key-one-megabyte",
            "base60-plain-scalar",
        ):
            continue  # apiserver limits, bigger than these file limits
        errors, _ = refuse(case, small)
        assert any(error.file == case.file and case.message in error.message for error in errors), (
            case.name,
            [str(error)[:160] for error in errors[:3]],
        )


def test_the_readme_of_the_corpus_is_in_the_repository_next_to_the_cases():
    assert Path(MALFORMED, "README.md").is_file()
