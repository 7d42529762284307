"""``gitops validate`` offline (gitops/validate.py): a checkout on disk or in Git, no database, no cluster."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gitops.desired.errors import RevisionRejected, ValidationError
from gitops.desired.limits import DEFAULT_LIMITS, Limits
from gitops.desired.revision import READ_PATHS, load_revision
from gitops.fetch.mirror import GitMirror
from gitops.validate import (
    CheckoutError,
    Exit,
    git_checkout,
    limits_from_environment,
    run,
    validate,
    working_tree_checkout,
)
from tests.corpus import GENERATORS, case_named, static_cases
from tests.gitrepo import GitRepo

POLICY = b"targets:\n  namespaces: [team-a, team-b, team-c]\nflags:\n  namespace: flags\n"
APP = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  LOG_LEVEL: info\n"
PINNED = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: pinned\n  namespace: team-a\ndata:\n  A: b\n"
FLAGS = (
    b'{"flags": {"new-checkout": {"state": "ENABLED", "variants": {"on": true, "off": false},'
    b' "defaultVariant": "off"}}}\n'
)
GOOD = {
    "sluice.yaml": POLICY,
    "configmaps/app.yaml": APP,
    "configmaps/team-a/pinned.yaml": PINNED,
    "flags/checkout.json": FLAGS,
    "flags/pricing.yaml": b"flags:\n  discount:\n    state: DISABLED\n    variants: {a: 1, b: 2}\n"
    b"    defaultVariant: a\n",
    "README.md": b"not read\n",
    "configmaps/notes.txt": b"ignored: not .yaml\n",
}
SUMMARY = "valid: 4 ConfigMaps in 3 namespaces, 2 flag sets"


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for path, content in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return root


def sync_errors(files: dict[str, bytes], limits: Limits = DEFAULT_LIMITS) -> list[ValidationError]:
    """What the sync's loader says of these files, given as a Git listing would give them."""
    blob_ids = {path: f"{index:040x}" for index, path in enumerate(sorted(files))}
    blobs = {blob_ids[path]: content for path, content in files.items()}
    with pytest.raises(RevisionRejected) as rejected:
        load_revision(
            blob_ids,
            lambda ids: {blob: blobs[blob] for blob in ids},
            sizes={path: len(content) for path, content in files.items()},
            limits=limits,
        )
    return rejected.value.errors


def printed(path: Path, **options) -> tuple[Exit, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    verdict = run(
        str(path), limits=options.pop("limits", DEFAULT_LIMITS), stdout=stdout, stderr=stderr, **options
    )
    return verdict, stdout.getvalue(), stderr.getvalue()


# -- the working tree ------------------------------------------------------------------------------


def test_a_valid_checkout_prints_one_summary_line_and_says_the_scope_was_not_checked(tmp_path: Path):
    write_tree(tmp_path, GOOD)

    verdict, out, err = printed(tmp_path)

    assert verdict == Exit.VALID
    assert out == f"{SUMMARY} (working tree of {tmp_path}; administrator scope not checked)\n"
    assert err == ""


def test_an_invalid_checkout_prints_each_error_as_the_sync_reports_it_and_exits_1(tmp_path: Path):
    files = {
        **GOOD,
        "sluice.yaml": POLICY + b"selfHeel: true\n",
        "configmaps/app.yaml": APP + b"  PORT: 8080\n",
        "flags/checkout.json": FLAGS.replace(b'"defaultVariant": "off"', b'"defaultVariant": "blue"'),
    }
    write_tree(tmp_path, files)

    verdict, out, err = printed(tmp_path)

    assert verdict == Exit.INVALID
    assert out.splitlines() == [
        'configmaps/app.yaml:7: data.PORT: value must be a string, not a number; quote it: "8080"',
        "flags/checkout.json:1: flags.new-checkout.defaultVariant: "
        '"blue" is not one of the variants (on, off)',
        "sluice.yaml:5: selfHeel: unknown field 'selfHeel'; did you mean 'selfHeal'?",
    ]
    assert out.splitlines() == [str(error) for error in sync_errors(files)]
    assert err == f"invalid: 3 errors (working tree of {tmp_path}; administrator scope not checked)\n"


def test_namespaces_outside_what_an_administrator_might_allow_pass_offline(tmp_path: Path):
    # No administrator offline: only the repository's own allowedNamespaces are checked.
    policy = POLICY + b"allowedNamespaces: [team-*, flags]\n"
    write_tree(tmp_path, {**GOOD, "sluice.yaml": policy})
    assert validate(tmp_path).valid
    outside = PINNED.replace(b"namespace: team-a", b"namespace: kube-system")
    write_tree(tmp_path, {"configmaps/team-a/pinned.yaml": outside})
    (error,) = validate(tmp_path).errors
    assert (error.file, error.line, error.field) == ("configmaps/team-a/pinned.yaml", 1, "metadata.namespace")
    assert "not allowed by sluice.yaml" in error.message


def test_symlinks_to_files_and_directories_are_skipped_as_the_sync_skips_them(tmp_path: Path):
    source = write_tree(tmp_path / "source", GOOD)
    outside = write_tree(tmp_path / "outside", {"bad.yaml": b"kind: Secret\n", "more/bad.yaml": b"[\n"})
    os.symlink(outside / "bad.yaml", source / "configmaps/linked.yaml")
    os.symlink(outside / "more", source / "configmaps/linked-dir")
    os.symlink(outside / "bad.yaml", source / "flags/linked.json")

    report = validate(source)

    assert report.valid, report.errors
    assert report.summary().startswith(SUMMARY)
    listed = working_tree_checkout(source, DEFAULT_LIMITS).files
    assert not [path for path in listed if "linked" in path]


def test_a_symlinked_directory_is_not_followed(tmp_path: Path):
    source = write_tree(tmp_path / "source", {"configmaps/app.yaml": APP})
    write_tree(tmp_path / "elsewhere", {"configmaps/x.yaml": b"kind: Pod\n"})
    os.symlink(tmp_path / "elsewhere/configmaps", source / "flags")

    assert validate(source).summary().startswith("valid: 1 ConfigMap in 1 namespace, 0 flag sets")


@pytest.mark.parametrize("kind", ["a symlink", "a directory"])
def test_a_policy_file_that_is_not_a_regular_file_is_refused_as_a_sync_refuses_it(tmp_path: Path, kind):
    """A sync rejects it (skipped, it left the revision under the default policy); the validator said
    "valid" until 2026-12-06, in the working tree, the index and a commit alike."""
    source = write_tree(tmp_path / "source", {"configmaps/app.yaml": APP})
    if kind == "a symlink":
        write_tree(tmp_path / "elsewhere", {"sluice.yaml": GOOD["sluice.yaml"]})
        os.symlink(tmp_path / "elsewhere/sluice.yaml", source / "sluice.yaml")
    else:
        write_tree(source, {"sluice.yaml/x.yaml": GOOD["sluice.yaml"]})
    expected = f"sluice.yaml: {kind}; Sluice reads regular files only"
    assert [str(error) for error in validate(source).errors] == [expected]
    subprocess.run(["git", "init", "-q", str(source)], check=True)
    subprocess.run(["git", "-C", str(source), "add", "-A"], check=True)
    assert [str(error) for error in validate(source, staged=True).errors] == [expected]


def test_a_nested_repository_is_skipped_like_a_submodule(tmp_path: Path):
    write_tree(
        tmp_path, {**GOOD, "configmaps/vendored/.git/HEAD": b"ref: x\n", "configmaps/vendored/x.yaml": b"["}
    )
    assert validate(tmp_path).valid


def test_path_may_point_at_a_subdirectory_like_a_sources_path(tmp_path: Path):
    write_tree(tmp_path, {"configmaps/broken.yaml": b"[", "sluice.yaml": b"nonsense: 1\n"})
    subdirectory = write_tree(tmp_path / "deploy/sluice", GOOD)

    assert validate(subdirectory).valid
    write_tree(subdirectory, {"configmaps/app.yaml": APP + b"  PORT: 8080\n"})
    (error,) = validate(subdirectory).errors
    # Named relative to the source's directory, as the sync names it.
    assert str(error).startswith("configmaps/app.yaml:7: data.PORT:")


def test_a_path_that_is_not_a_directory_cannot_be_validated(tmp_path: Path):
    verdict, out, err = printed(tmp_path / "missing")
    assert (verdict, out) == (Exit.UNREADABLE, "")
    assert err == f"cannot validate: {tmp_path / 'missing'} is not a directory\n"


# -- limits ---------------------------------------------------------------------------------------------


def test_a_file_past_the_size_limit_is_refused_from_its_listed_size_without_being_read(tmp_path: Path):
    write_tree(tmp_path, {**GOOD, "configmaps/big.yaml": b"# padding\n" * 20})
    limits = Limits(max_file_bytes=150)
    checkout = working_tree_checkout(tmp_path, limits)
    read: list[str] = []

    def recording(ids: list[str]):
        read.extend(ids)
        return checkout.read_blobs(ids)

    with pytest.raises(RevisionRejected) as rejected:
        load_revision(checkout.files, recording, sizes=checkout.sizes, limits=limits)

    (error,) = rejected.value.errors
    assert str(error) == (
        "configmaps/big.yaml: the file is 200 bytes; files are read up to 150 bytes "
        "(setting SLUICE_MAX_FILE_BYTES)"
    )
    assert read == []
    assert validate(tmp_path, limits=limits).errors == (error,)


def test_too_many_files_are_refused_naming_the_file_the_sync_names_after_listing_one_past_the_limit(
    tmp_path: Path,
):
    extra = {f"configmaps/many/{index:03d}.yaml": b"# empty\n" for index in range(30)}
    files = {**GOOD, **extra}
    write_tree(tmp_path, files)
    limits = Limits(max_files=12)

    assert len(working_tree_checkout(tmp_path, limits).files) == 13
    assert list(validate(tmp_path, limits=limits).errors) == sync_errors(files, limits)
    (error,) = validate(tmp_path, limits=limits).errors
    assert error.file == sorted(path for path in files if path.startswith(READ_PATHS))[12]


def test_limits_come_from_the_same_variables_a_server_reads():
    assert limits_from_environment({}) == DEFAULT_LIMITS
    chosen = limits_from_environment({"SLUICE_MAX_FILE_BYTES": "1_000", "SLUICE_MAX_DEPTH": " 8 "})
    assert (chosen.max_file_bytes, chosen.max_depth, chosen.max_files) == (1000, 8, DEFAULT_LIMITS.max_files)
    with pytest.raises(CheckoutError, match="SLUICE_MAX_FILES must be a whole number, not 'many'"):
        limits_from_environment({"SLUICE_MAX_FILES": "many"})
    with pytest.raises(CheckoutError, match="SLUICE_MAX_ALIASES must be a whole number of at least 1"):
        limits_from_environment({"SLUICE_MAX_ALIASES": "0"})


# -- the malformed-input corpus -----------------------------------------------------------------------

CASE_NAMES = [case.name for case in static_cases()] + list(GENERATORS)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_every_malformed_case_is_refused_offline_with_the_errors_the_sync_gives(name: str, tmp_path: Path):
    case = case_named(name)
    files = case.revision()
    write_tree(tmp_path, files)
    try:
        report = validate(tmp_path)
    finally:
        shutil.rmtree(tmp_path)  # some cases are tens of megabytes

    assert not report.valid
    assert list(report.errors) == sync_errors(files)
    assert any(
        error.file == case.file and error.line == case.line and case.message in error.message
        for error in report.errors
    ), [str(error)[:200] for error in report.errors[:5]]


# -- Git: a committed tree and the index ---------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    repository = GitRepo(tmp_path / "repo")
    repository.write_all(GOOD)
    os.symlink("../flags/checkout.json", repository.work / "configmaps/link.yaml")
    repository.commit("good", push=False)
    return repository


def test_git_ref_validates_the_committed_tree_whatever_the_working_tree_holds(repo: GitRepo):
    good = repo.head()
    repo.write("configmaps/app.yaml", APP + b"  PORT: 8080\n")

    assert not validate(repo.work).valid  # the working tree
    assert validate(repo.work, git_ref="HEAD").valid
    repo.commit("break it", push=False)
    verdict, out, err = printed(repo.work, git_ref="HEAD")
    assert verdict == Exit.INVALID
    assert out.startswith("configmaps/app.yaml:7: data.PORT: value must be a string")
    assert err == f"invalid: 1 error (HEAD of {repo.work}; administrator scope not checked)\n"
    assert printed(repo.work, git_ref=good)[0] == Exit.VALID
    assert printed(repo.work, git_ref=good[:10])[0] == Exit.VALID


def test_git_ref_lists_exactly_the_files_the_sync_lists_from_its_mirror(repo: GitRepo):
    repo.write_all({"deploy/sluice/sluice.yaml": POLICY, "deploy/sluice/configmaps/a.yaml": APP})
    commit = repo.commit("a subdirectory source", push=False)
    mirror = GitMirror(repo.work / ".git")

    for subpath in ("", "deploy/sluice"):
        listed = git_checkout(repo.work / subpath, commit, DEFAULT_LIMITS)
        synced = mirror.list_tree(commit, subpath, paths=READ_PATHS)
        assert listed.files == {path: entry.blob for path, entry in synced.items()}
        assert listed.sizes == {path: entry.size for path, entry in synced.items()}
        # The working tree, clean here, lists the same files.
        assert set(working_tree_checkout(repo.work / subpath, DEFAULT_LIMITS).files) == set(synced)
    assert "configmaps/link.yaml" not in listed.files


def test_a_source_path_that_is_a_symlink_or_gone_in_the_commit_is_refused_as_the_sync_refuses_it(
    repo: GitRepo,
):
    """git's own prefix resolves a symlink: `validate deploy` of a repository whose deploy/ is a symlink
    said valid in every mode, and every sync of that commit rejected it (before 2026-12-07). A path
    missing at the ref was "cannot validate" (2), which the sync rejects (1)."""
    from gitops.desired.errors import source_path_error
    from gitops.fetch.mirror import SourcePathNotADirectory

    repo.write_all({"other/sluice.yaml": POLICY, "other/configmaps/a.yaml": APP})
    os.symlink("other", repo.work / "deploy")
    commit = repo.commit("deploy is a link", push=False)
    with pytest.raises(SourcePathNotADirectory) as synced:
        GitMirror(repo.work / ".git").list_tree(commit, "deploy", paths=READ_PATHS)
    assert synced.value.kind == "a symlink"
    refusal = str(source_path_error("deploy", "a symlink"))

    for options in ({}, {"staged": True}, {"git_ref": "HEAD"}):
        verdict, out, _ = printed(repo.work / "deploy", **options)
        assert (verdict, out) == (Exit.INVALID, refusal + "\n"), options
    assert printed(repo.work / "other", git_ref="HEAD")[0] == Exit.VALID

    (repo.work / "later").mkdir()
    verdict, out, _ = printed(repo.work / "later", git_ref="HEAD")
    assert (verdict, out) == (Exit.INVALID, str(source_path_error("later", None)) + "\n")


def test_git_ref_reads_the_same_bytes_as_the_working_tree(repo: GitRepo):
    listed = git_checkout(repo.work, "HEAD", DEFAULT_LIMITS)
    contents = listed.read_blobs(list(listed.files.values()))
    assert {path: contents[blob] for path, blob in listed.files.items()} == {
        path: content for path, content in GOOD.items() if path.startswith(READ_PATHS)
    }


def test_staged_validates_what_the_next_commit_holds(repo: GitRepo):
    repo.write("configmaps/app.yaml", APP + b"  PORT: 8080\n")
    assert validate(repo.work, staged=True).valid  # not staged yet
    repo.git("add", "configmaps/app.yaml")
    assert not validate(repo.work, staged=True).valid
    repo.write("configmaps/app.yaml", APP)  # fixed in the working tree only
    assert not validate(repo.work, staged=True).valid
    assert validate(repo.work).valid
    verdict, out, _ = printed(repo.work / "configmaps", staged=True)
    assert verdict == Exit.VALID  # configmaps/ as the source's path holds no ConfigMap at its top
    assert out.startswith("valid: 0 ConfigMaps in 0 namespaces, 0 flag sets (staged files of")


@pytest.mark.parametrize(
    "where, options, message",
    [
        (
            "repo",
            {"git_ref": "no-such-branch"},
            "'no-such-branch' names no commit or tree in the repository at",
        ),
        ("repo", {"git_ref": "--output=/tmp/x"}, "'--output=/tmp/x' is not a ref"),
        ("plain", {"git_ref": "HEAD"}, "git rev-parse failed in"),
        ("plain", {"staged": True}, "git rev-parse failed in"),
    ],
)
def test_a_ref_or_repository_git_cannot_read_exits_2_saying_why(
    repo: GitRepo, tmp_path, where, options, message
):
    path = repo.work if where == "repo" else write_tree(tmp_path / "plain", GOOD)
    verdict, out, err = printed(path, **options)
    assert (verdict, out) == (Exit.UNREADABLE, "")
    assert err.startswith("cannot validate: ") and message in err, err


def test_git_ref_stops_listing_one_file_past_the_limit_as_the_working_tree_does(repo: GitRepo):
    repo.write_all({f"configmaps/many/{index:03d}.yaml": b"# empty\n" for index in range(30)})
    commit = repo.commit("many files", push=False)
    limits = Limits(max_files=12)

    assert len(git_checkout(repo.work, commit, limits).files) == 13
    assert list(validate(repo.work, git_ref=commit, limits=limits).errors) == list(
        validate(repo.work, limits=limits).errors
    )


def test_git_ref_refuses_a_tree_of_empty_trees_at_once_naming_where(repo: GitRepo):
    """Four levels of 200 directories ending in the empty tree: 28 KiB of objects, 1.6 billion
    directories and no file. The listing printed nothing for a directory, so git ran until its time limit
    (two minutes), and a tree of files the same shape was buffered whole in memory first."""
    import time

    from tests.unit.test_tree_bombs import tree_of_empty_trees

    bomb = tree_of_empty_trees(repo.work / ".git")
    commit = repo.git("commit-tree", "-m", "bomb", bomb).strip()
    started = time.monotonic()

    verdict, out, _ = printed(repo.work, git_ref=commit)

    assert verdict == Exit.INVALID
    assert out.startswith("configmaps/d000/d")
    assert "more than 100,000 directories, symlinks and submodules where Sluice reads files" in out
    assert time.monotonic() - started < 10, "refused as soon as the bound is passed"
