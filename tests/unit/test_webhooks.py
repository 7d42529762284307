"""Webhook signatures and payloads in each provider's documented format."""

import json

import pytest

from gitops.intake.webhooks import WebhookRejected, identify, parse, sign, verify

SECRET = "a-long-enough-webhook-secret"
COMMIT = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
GITHUB_PUSH = json.dumps(
    {
        "ref": "refs/heads/main",
        "before": "0" * 40,
        "after": COMMIT,
        "repository": {"full_name": "octo/config"},
        "pusher": {"name": "ada"},
        "head_commit": {"id": COMMIT, "message": "tune nginx"},
    }
).encode()
GITLAB_PUSH = json.dumps(
    {
        "object_kind": "push",
        "ref": "refs/heads/main",
        "before": "0" * 40,
        "after": COMMIT,
        "checkout_sha": COMMIT,
    }
).encode()
GITEA_PUSH = json.dumps(
    {"ref": "refs/heads/main", "before": "0" * 40, "after": COMMIT, "pusher": {"login": "ada"}}
).encode()


def test_githubs_documented_test_vector():
    assert (
        sign("It's a Secret to Everybody", b"Hello, World!")
        == "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def github_headers(body: bytes, *, event: str = "push", secret: str = SECRET) -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": sign(secret, body),
    }


def test_a_signed_github_push_is_verified_and_parsed():
    headers = github_headers(GITHUB_PUSH)
    assert identify(headers) == "github"
    verify("github", headers, GITHUB_PUSH, SECRET)
    event = parse("github", headers, GITHUB_PUSH)
    assert (event.event, event.branch, event.commit, event.delivery_id) == (
        "push",
        "main",
        COMMIT,
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    )


def test_a_github_ping_is_recognised():
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    headers = github_headers(body, event="ping")
    verify("github", headers, body, SECRET)
    assert parse("github", headers, body).event == "ping"


def test_gitlab_sends_the_token_itself():
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET, "X-Gitlab-Event-UUID": "u-1"}
    assert identify(headers) == "gitlab"
    verify("gitlab", headers, GITLAB_PUSH, SECRET)
    assert parse("gitlab", headers, GITLAB_PUSH).commit == COMMIT
    with pytest.raises(WebhookRejected, match="token does not match"):
        verify("gitlab", {**headers, "X-Gitlab-Token": "guess"}, GITLAB_PUSH, SECRET)


@pytest.mark.parametrize("prefix", ["Gitea", "Forgejo", "Gogs"])
def test_gitea_forgejo_and_gogs_sign_with_a_bare_hex_hmac(prefix):
    signature = sign(SECRET, GITEA_PUSH).removeprefix("sha256=")
    headers = {f"X-{prefix}-Event": "push", f"X-{prefix}-Signature": signature, f"X-{prefix}-Delivery": "d-1"}
    assert identify(headers) == "gitea"
    verify("gitea", headers, GITEA_PUSH, SECRET)
    assert parse("gitea", headers, GITEA_PUSH).delivery_id == "d-1"


def test_the_generic_format_signs_the_raw_body():
    headers = {"X-Sluice-Event": "push", "X-Sluice-Signature": sign(SECRET, GITEA_PUSH)}
    assert identify(headers) == "generic"
    verify("generic", headers, GITEA_PUSH, SECRET)


@pytest.mark.parametrize(
    "headers, reason",
    [
        ({"X-GitHub-Event": "push"}, "missing signature"),
        (
            {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign("wrong secret!!", GITHUB_PUSH)},
            "does not match",
        ),
        (
            {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(SECRET, GITHUB_PUSH + b" ")},
            "does not match",
        ),
        ({"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha1=abc"}, "does not match"),
    ],
)
def test_a_missing_or_wrong_signature_is_401(headers, reason):
    with pytest.raises(WebhookRejected, match=reason) as rejected:
        verify("github", headers, GITHUB_PUSH, SECRET)
    assert rejected.value.status == 401


def test_without_a_secret_nothing_is_accepted():
    with pytest.raises(WebhookRejected, match="no webhook secret"):
        verify("github", github_headers(GITHUB_PUSH), GITHUB_PUSH, "")


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"ref": "main", "after": "' + COMMIT.encode() + b'"}', "refs/heads/main"),
        (b'{"ref": "refs/heads/main", "after": "abc"}', "full commit hash"),
    ],
)
def test_malformed_bodies_are_400(body, reason):
    with pytest.raises(WebhookRejected, match=reason) as rejected:
        parse("github", {"X-GitHub-Event": "push"}, body)
    assert rejected.value.status == 400


def test_unknown_senders_are_400():
    with pytest.raises(WebhookRejected) as rejected:
        identify({"User-Agent": "curl"})
    assert rejected.value.status == 400
