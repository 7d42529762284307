"""The pure parts of gitops.fetch: redaction, credential references, error classification, argv."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from gitops.errors import PermanentError, TemporaryError
from gitops.fetch import (
    Credentials,
    GitMirror,
    build_fetch_invocation,
    classify_git_error,
    redact_url,
    resolve_credentials,
)

SECRET = "ghp_s3cr3tT0ken"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("https://user:secret@host/x.git", "https://user:***@host/x.git"),
        ("https://token@host", "https://***@host"),
        ("http://token@host:8080/x.git", "http://***@host:8080/x.git"),
        ("https://user:p@ss@host/x.git", "https://user:***@host/x.git"),
        ("ssh://git:secret@host/x.git", "ssh://git:***@host/x.git"),
        ("ssh://git@host/x.git", "ssh://git@host/x.git"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("file:///srv/git/repo.git", "file:///srv/git/repo.git"),
        ("https://host/x.git", "https://host/x.git"),
        ("https://host/path@with-at", "https://host/path@with-at"),
        ("", ""),
        (
            "fatal: unable to access 'https://u:secret@host/x/': 403",
            "fatal: unable to access 'https://u:***@host/x/': 403",
        ),
        ("_https://u:secret@host", "_https://u:***@host"),
        ("x.https://u:secret@host", "x.https://u:***@host"),
        ("see (https://u:secret@h) and http://tok@h", "see (https://u:***@h) and http://***@h"),
    ],
)
def test_redact_url(url, redacted):
    assert redact_url(url) == redacted


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "text", ["a." * 100_000, "a-" * 100_000, "https://" + "b:" * 100_000, "a://" * 50_000]
)
def test_redaction_takes_linear_time_on_long_runs_of_scheme_characters(text):
    # The word-boundary pattern before took 4 s on 40,000 characters of "a.a.a…", quadratic.
    assert redact_url(f"{text} https://u:secret@host") == f"{text} https://u:***@host"


def test_credentials_repr_hides_the_token():
    credentials = Credentials(token=SECRET, username="oauth2")

    assert SECRET not in repr(credentials)
    assert SECRET not in str(credentials)
    assert "oauth2" in repr(credentials)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"token": SECRET, "ssh_key_file": "/key"},
        {"token": f"{SECRET}\r\nX-Injected: 1"},
        {"token": ""},
        {"token": SECRET, "username": "a:b"},
    ],
)
def test_credentials_refuse_ambiguous_or_unsafe_values(kwargs):
    with pytest.raises(ValueError) as raised:  # noqa: PT011 (the message is checked below)
        Credentials(**kwargs)
    assert SECRET not in str(raised.value)


def test_resolve_an_empty_reference_is_no_credentials():
    assert resolve_credentials("") is None
    assert resolve_credentials("  ") is None


def test_resolve_env(monkeypatch):
    monkeypatch.setenv("SLUICE_TEST_TOKEN", f"{SECRET}\n")

    assert resolve_credentials("env:SLUICE_TEST_TOKEN") == Credentials(token=SECRET)
    assert resolve_credentials("env:SLUICE_TEST_TOKEN", username="oauth2") == Credentials(
        token=SECRET, username="oauth2"
    )


def test_resolve_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(f"{SECRET}\n")

    assert resolve_credentials(f"file:{token_file}") == Credentials(token=SECRET)


def test_resolve_ssh_key(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")

    assert resolve_credentials(f"ssh-key:{key}") == Credentials(ssh_key_file=str(key))


@pytest.mark.parametrize(
    ("reference", "named"),
    [
        ("env:SLUICE_TEST_UNSET_VARIABLE", "SLUICE_TEST_UNSET_VARIABLE"),
        ("file:/nonexistent/sluice-token", "/nonexistent/sluice-token"),
        ("ssh-key:/nonexistent/id_ed25519", "/nonexistent/id_ed25519"),
        ("env:SLUICE_TEST_EMPTY", "is empty"),
        ("vault:secret/git", "'vault'"),
        ("env:", "expected env:VAR"),
    ],
)
def test_unresolvable_references_are_permanent_and_named(monkeypatch, reference, named):
    monkeypatch.delenv("SLUICE_TEST_UNSET_VARIABLE", raising=False)
    monkeypatch.setenv("SLUICE_TEST_EMPTY", "")

    with pytest.raises(PermanentError, match="credentials") as raised:
        resolve_credentials(reference)
    assert named in str(raised.value)


@pytest.mark.parametrize("pasted", [SECRET, f"token:{SECRET}", f"Bearer {SECRET}"])
def test_a_token_pasted_as_the_reference_is_not_echoed(pasted):
    with pytest.raises(PermanentError) as raised:
        resolve_credentials(pasted)
    assert SECRET not in str(raised.value)


def test_a_token_file_is_never_echoed_when_it_is_not_text(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_bytes(b"\xff" + SECRET.encode())

    with pytest.raises(PermanentError, match="not UTF-8") as raised:
        resolve_credentials(f"file:{token_file}")
    assert SECRET not in str(raised.value)


# What git 2.39 and common servers print, with the class each must land in.
PERMANENT = [
    "fatal: couldn't find remote ref refs/heads/nope",
    "fatal: '/srv/none' does not appear to be a git repository\n"
    "fatal: Could not read from remote repository.\n\nPlease make sure you have the correct access rights",
    "remote: Repository not found.\nfatal: repository 'https://github.com/o/r.git/' not found",
    "ERROR: The project you were looking for could not be found or you don't have permission to view it.\n"
    "fatal: Could not read from remote repository.",
    "fatal: unable to access 'https://h/r/': The requested URL returned error: 404",
    "remote: HTTP Basic: Access denied\nfatal: Authentication failed for 'https://gitlab.com/o/r.git/'",
    "fatal: could not read Username for 'https://github.com': terminal prompts disabled",
    "git@github.com: Permission denied (publickey).\r\nfatal: Could not read from remote repository.",
    "Host key verification failed.\r\nfatal: Could not read from remote repository.",
    "fatal: unable to access 'https://h/r/': The requested URL returned error: 403",
    "fatal: unable to access 'https://h/': SSL certificate problem: unable to get local issuer certificate",
    "fatal: unable to find remote helper for 'htps'",
    "git: 'remote-htps' is not a git command. See 'git --help'.",
    "fatal: unable to access 'https://h:99999/r/': URL using bad/illegal format or missing URL",
    "fatal: invalid refspec '+refs/heads/x y:refs/x'",
]
TEMPORARY = [
    "ssh: connect to host github.com port 22: Connection timed out\r\n"
    "fatal: Could not read from remote repository.",
    "fatal: unable to access 'https://h/': Failed to connect to h port 443 after 2 ms: Connection refused",
    "fatal: unable to access 'https://h/': Could not resolve host: h",
    "ssh: Could not resolve hostname h: Temporary failure in name resolution",
    "error: RPC failed; curl 56 Recv failure: Connection reset by peer\nfatal: early EOF",
    "fatal: the remote end hung up unexpectedly",
    "error: cannot lock ref 'refs/sluice/heads/main': Unable to create '/m/refs/sluice/heads/main.lock': "
    "File exists.",
    "error: could not lock ref 'refs/sluice/heads/main'",
    "fatal: unable to access 'https://h/r/': The requested URL returned error: 503",
    "fatal: unable to access 'https://h/r/': The requested URL returned error: 429",
    "fatal: unable to access 'https://h/': gnutls_handshake() failed: The TLS connection was non-properly "
    "terminated.",
    "fatal: unable to access 'https://h/': Operation timed out after 300000 milliseconds",
]


@pytest.mark.parametrize("stderr", PERMANENT)
def test_permanent_git_failures(stderr):
    error, reason = classify_git_error(stderr, 128)
    assert error is PermanentError
    assert reason


@pytest.mark.parametrize("stderr", TEMPORARY)
def test_temporary_git_failures(stderr):
    error, _ = classify_git_error(stderr, 128)
    assert error is TemporaryError


def test_unforeseen_failures_are_retried_and_usage_errors_are_not():
    assert classify_git_error("", -9)[0] is TemporaryError
    assert classify_git_error("fatal: something new", 128)[0] is TemporaryError
    assert classify_git_error("error: unknown option `frobnicate'", 129)[0] is PermanentError


def test_a_token_invocation_keeps_the_token_out_of_argv(tmp_path):
    invocation = build_fetch_invocation(
        tmp_path, "https://git.example.com/o/r.git", "main", Credentials(token=SECRET)
    )

    assert all(SECRET not in arg for arg in invocation.argv)
    assert SECRET in invocation.secrets
    assert invocation.env["GIT_TERMINAL_PROMPT"] == "0"
    assert "--no-tags" in invocation.argv
    assert invocation.argv[-1] == "+refs/heads/main:refs/sluice/heads/main"


def test_a_legacy_urls_query_is_kept_out_of_what_git_says(tmp_path):
    """git repeats the URL in its errors: a query from before they were refused (a token under any name,
    ``?code=``) reached last_error, pages, the API and notifications."""
    from gitops.fetch.git import stderr_summary

    url = "https://git.example.com/o/r.git?code=AZ-KEY-1#frag"
    invocation = build_fetch_invocation(tmp_path, url, "main", Credentials(token=SECRET))
    said = f"fatal: unable to access '{url.partition('#')[0]}/': Could not resolve host"

    shown = stderr_summary(said, invocation.secrets)

    assert "AZ-KEY-1" not in shown and SECRET in invocation.secrets
    assert "https://git.example.com/o/r.git?***/" in shown


def test_inherited_git_variables_do_not_leak_into_the_invocation(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_DIR", "/somewhere/else")
    monkeypatch.setenv("GIT_TRACE_CURL", "1")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "5")

    invocation = build_fetch_invocation(tmp_path, "file:///r", "main", None)

    assert "GIT_DIR" not in invocation.env
    assert "GIT_TRACE_CURL" not in invocation.env
    keys = {invocation.env[f"GIT_CONFIG_KEY_{i}"] for i in range(int(invocation.env["GIT_CONFIG_COUNT"]))}
    assert keys == {
        "credential.helper",
        "protocol.ext.allow",
        "maintenance.auto",
        "http.followRedirects",
        "fetch.unpackLimit",
        "core.bigFileThreshold",
        "pack.threads",
    }


def config_of(env: dict[str, str]) -> dict[str, str]:
    count = int(env["GIT_CONFIG_COUNT"])
    return {env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"] for i in range(count)}


def test_a_fetch_is_held_to_both_bounds_by_one_prlimit_and_to_neither_when_both_are_off(tmp_path):
    bounded = build_fetch_invocation(tmp_path, "file:///r", "main", None, max_bytes=1000, max_memory=2000)
    assert bounded.argv[0].endswith("prlimit")
    assert bounded.argv[1 : bounded.argv.index("--")] == ["--data=2000", "--fsize=1000", "--core=0"]
    assert bounded.argv[bounded.argv.index("--") + 1] == "git", "one prlimit, then git itself"
    assert config_of(bounded.env)["core.bigFileThreshold"] == "16m", "a large blob is streamed, not held"
    assert config_of(bounded.env)["pack.threads"] == "2", "each thread's stack counts against the bound"

    memory_only = build_fetch_invocation(tmp_path, "file:///r", "main", None, max_bytes=0, max_memory=2000)
    assert memory_only.argv[1:3] == ["--data=2000", "--"]
    assert "fetch.unpackLimit" not in config_of(memory_only.env)

    unbounded = build_fetch_invocation(tmp_path, "file:///r", "main", None, max_bytes=0, max_memory=0)
    assert unbounded.argv[0] == "git"
    assert "core.bigFileThreshold" not in config_of(unbounded.env)


@pytest.mark.parametrize(
    ("said", "bound"),
    [
        (
            "fatal: Out of memory, malloc failed (tried to allocate 503 bytes)\nfatal: index-pack failed",
            True,
        ),
        ("error: inflateInit: out of memory (no message)", True),
        ("fatal: Out of memory? mmap failed: Cannot allocate memory", True),
        ("fatal: unable to create thread: Resource temporarily unavailable", True),
        ("fatal: cannot fork: Cannot allocate memory", True),
        ("remote: fatal: Out of memory, malloc failed (tried to allocate 9 bytes)\nfatal: early EOF", False),
        ("fatal: '/srv/out of memory/r.git' does not appear to be a git repository", False),
        ("fatal: unable to access 'https://h/out of memory/': Could not resolve host", False),
    ],
)
def test_only_gits_own_allocation_failures_are_taken_for_the_memory_bound(said, bound):
    """A Git server's own failure (``remote:``), or words in a quoted URL, are not Sluice's bound."""
    from gitops.fetch.git import OUT_OF_MEMORY

    assert bool(OUT_OF_MEMORY.search(said)) is bound


def test_a_local_git_run_held_to_the_memory_bound_keeps_its_own_config_and_secrets(tmp_path):
    from gitops.fetch.git import git_at, memory_bounded

    token = Credentials(token=SECRET)
    fetch = build_fetch_invocation(tmp_path, "https://h/r.git", "main", token, max_memory=0)
    bounded = memory_bounded(fetch, 4096)
    assert bounded.argv[1:3] == ["--data=4096", "--"] and bounded.argv[3:] == fetch.argv
    assert config_of(bounded.env) == {
        **config_of(fetch.env),
        "core.bigFileThreshold": "16m",
        "pack.threads": "2",
    }
    assert bounded.secrets == fetch.secrets
    assert config_of(fetch.env).get("core.bigFileThreshold") is None, "the invocation given is not changed"

    maintenance = git_at(tmp_path, "maintenance", "run", "--auto")
    assert config_of(memory_bounded(maintenance, 4096).env) == {
        "core.bigFileThreshold": "16m",
        "pack.threads": "2",
    }
    assert memory_bounded(maintenance, 0) is maintenance


@pytest.mark.parametrize("url", ["ssh://git@host/o/r.git", "git@host:o/r.git"])
def test_an_ssh_key_goes_into_the_ssh_command(tmp_path, url):
    key = tmp_path / "my keys" / "id_ed25519"
    key.parent.mkdir()
    key.write_text("a key\n")  # ssh leaves out a key file that does not exist

    invocation = build_fetch_invocation(tmp_path, url, "main", Credentials(ssh_key_file=str(key)))

    command = shlex.split(invocation.env["GIT_SSH_COMMAND"])
    assert command[command.index("-i") + 1] == str(key)
    assert "IdentitiesOnly=yes" in command
    assert "BatchMode=yes" in command
    resolved = ssh_resolved(command)
    assert resolved["identityfile"] == [str(key)]
    assert resolved["identityagent"] == ["none"]


def ssh_resolved(command: list[str]) -> dict[str, list[str]]:
    """What ssh itself makes of ``command``'s options and files (``ssh -G``), for a host of its own."""
    assert command[0] == "ssh"
    said = subprocess.run(
        [*command, "-G", "git.example.com"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    resolved: dict[str, list[str]] = {}
    for line in said.splitlines():
        key, _, value = line.partition(" ")
        resolved.setdefault(key, []).append(value)
    return resolved


def test_a_source_without_a_key_offers_ssh_no_key_agent_or_configuration_of_the_workers_account(
    tmp_path, monkeypatch
):
    """Without credentials, ssh offered the account's default keys (~/.ssh/id_*), its agent and whatever
    its configuration added for the host: a source fetched with the operator's deploy key, past the
    references an administrator may name (before 2026-12-07). git's HOME is /dev/null: no ~/.netrc,
    no ~/.gitconfig."""
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))

    invocation = build_fetch_invocation(tmp_path, "git@git.example.com:o/r.git", "main", None)

    command = shlex.split(invocation.env["GIT_SSH_COMMAND"])
    assert command[1:3] == ["-F", os.devnull], "no configuration file, the system's included"
    resolved = ssh_resolved(command)
    assert resolved["identityfile"] == ["none"]
    assert resolved["identityagent"] == ["none"]
    assert resolved["batchmode"] == ["yes"]
    assert "SSH_AUTH_SOCK" not in invocation.env
    assert invocation.env["HOME"] == os.devnull


def test_ssh_checks_host_keys_against_the_operators_known_hosts_file(tmp_path):
    known = tmp_path / "ssh keys" / "known_hosts-100%"  # ssh splits at spaces and expands % tokens

    invocation = build_fetch_invocation(
        tmp_path, "ssh://git@git.example.com/o/r.git", "main", None, ssh_known_hosts=str(known)
    )

    resolved = ssh_resolved(shlex.split(invocation.env["GIT_SSH_COMMAND"]))
    assert resolved["userknownhostsfile"] == [str(known)]
    assert resolved["stricthostkeychecking"] == ["true"]


def test_a_redirect_is_a_permanent_failure_that_says_what_to_do():
    said = "fatal: unable to access 'https://h/r.git/': The requested URL returned error: 301"

    error, reason = classify_git_error(said, 128)

    assert error is PermanentError
    assert "redirected" in reason and "URL" in reason


def test_credentials_that_do_not_fit_the_url_are_permanent(tmp_path):
    with pytest.raises(PermanentError, match="needs an http"):
        build_fetch_invocation(tmp_path, "git@host:o/r.git", "main", Credentials(token=SECRET))
    with pytest.raises(PermanentError, match="needs an SSH URL"):
        build_fetch_invocation(tmp_path, "https://host/r.git", "main", Credentials(ssh_key_file="/k"))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"https://x-access-token:{SECRET}@host/r.git", "embeds credentials"),
        (f"https://{SECRET}@host/r.git", "embeds credentials"),
        ("ext::sh -c touch% /tmp/pwned", "remote helper"),
        ("--upload-pack=touch /tmp/pwned", "malformed"),
        ("https://host/r.git\n", "malformed"),
    ],
)
def test_unsafe_urls_are_refused_before_git_runs(tmp_path, url, message):
    mirror = GitMirror(tmp_path / "mirror")
    with pytest.raises(PermanentError, match=message) as raised:
        mirror.fetch(url, "main")
    assert SECRET not in str(raised.value)
    assert not (tmp_path / "mirror").exists()


def test_a_git_without_cat_file_batch_command_is_a_permanent_error_that_says_so(tmp_path, monkeypatch):
    """git before 2.36 exits 129 on the option: say what is needed instead of retrying forever."""
    from gitops.fetch.git import CatFileBatch

    old_git = tmp_path / "bin" / "git"
    old_git.parent.mkdir()
    old_git.write_text("#!/bin/sh\necho 'usage: git cat-file ...' >&2\nexit 129\n")
    old_git.chmod(0o755)
    monkeypatch.setenv("PATH", f"{old_git.parent}:{os.environ['PATH']}")
    batch = CatFileBatch(tmp_path)
    try:
        with pytest.raises(PermanentError, match=r"git 2\.36 or later is needed"):
            batch.sizes(["0" * 40])
    finally:
        batch.close()


@pytest.mark.parametrize(
    "reference",
    [
        "env:SECRET_KEY",
        "env:DATABASE_URL",
        "env:CELERY_BROKER_URL",
        "file:/var/run/secrets/kubernetes.io/serviceaccount/token",
        "file:/var/run/secrets/kubernetes.io/../kubernetes.io/serviceaccount/token",
        "file:/proc/self/environ",
        "file://proc/self/environ",
        "ssh-key:/run/secrets/kubernetes.io/serviceaccount/token",
        "file:/run/secrets/eks.amazonaws.com/serviceaccount/token",
        "file:/var/run/secrets/azure/tokens/azure-identity-token",
        "env:CELERY_RESULT_BACKEND",
    ],
)
def test_a_reference_to_the_platforms_own_secrets_is_refused_when_set_and_when_used(reference, monkeypatch):
    # A source's token goes to the host its URL names: an admin could send Sluice's secrets anywhere.
    from gitops.fetch.credentials import reference_problem

    monkeypatch.setenv("SECRET_KEY", "s" * 50)
    assert reference_problem(reference) is not None
    with pytest.raises(PermanentError, match="not a Git credential"):
        resolve_credentials(reference)


def test_a_symbolic_link_to_the_service_account_token_is_refused_by_where_it_leads(tmp_path):
    link = tmp_path / "token"
    link.symlink_to("/var/run/secrets/kubernetes.io/serviceaccount/token")
    with pytest.raises(PermanentError, match="not a Git credential"):
        resolve_credentials(f"file:{link}")


def test_an_operator_narrows_where_credentials_come_from(tmp_path, monkeypatch):
    from gitops.fetch.credentials import CredentialScope, reference_problem

    allowed = tmp_path / "git"
    allowed.mkdir()
    (allowed / "token").write_text("t0ken\n")
    (tmp_path / "other").write_text("t0ken\n")
    monkeypatch.setenv("SLUICE_GIT_SHOP", "t0ken")
    monkeypatch.setenv("SHOP_TOKEN", "t0ken")
    scope = CredentialScope(env_prefix="SLUICE_GIT_", directories=(str(allowed),))

    assert resolve_credentials("env:SLUICE_GIT_SHOP", scope=scope).token == "t0ken"
    assert resolve_credentials(f"file:{allowed}/token", scope=scope).token == "t0ken"
    assert "SLUICE_CREDENTIALS_ENV_PREFIX" in reference_problem("env:SHOP_TOKEN", scope)
    assert "SLUICE_CREDENTIALS_DIRS" in reference_problem(f"file:{tmp_path}/other", scope)
    assert "SLUICE_CREDENTIALS_DIRS" in reference_problem(f"file:{allowed}/../other", scope)
    # A directory named through a link (Kubernetes mounts secrets as links to a timestamped directory).
    linked = tmp_path / "linked"
    linked.symlink_to(allowed)
    assert resolve_credentials(
        f"file:{linked}/token", scope=CredentialScope(directories=(str(linked),))
    ).token
    with pytest.raises(PermanentError, match="SLUICE_CREDENTIALS_DIRS"):
        resolve_credentials(f"file:{tmp_path}/other", scope=scope)
    # Without a scope, any variable or file but the platform's own, as before.
    assert resolve_credentials("env:SHOP_TOKEN").token == "t0ken"


def test_a_fetch_is_bounded_by_the_kernel_and_keeps_one_pack(tmp_path):
    invocation = build_fetch_invocation(
        tmp_path, "https://git.example.com/o/r.git", "main", None, max_bytes=4096, max_memory=0
    )
    config = config_of(invocation.env)

    assert invocation.argv[0].endswith("prlimit")
    assert invocation.argv[1:5] == ["--fsize=4096", "--core=0", "--", "git"]
    assert config["fetch.unpackLimit"] == "1", "one pack: the bound holds for the fetch, not for each object"
    assert config["maintenance.auto"] == "false", "maintenance would inherit the bound"

    unbounded = build_fetch_invocation(
        tmp_path, "https://git.example.com/o/r.git", "main", None, max_bytes=0, max_memory=0
    )
    assert unbounded.argv[0] == "git"
