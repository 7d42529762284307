"""``redact``: the secret shapes a message may carry (an exception's text, a server's answer, git's
stderr), and the messages it must leave readable."""

from __future__ import annotations

import time

import pytest

from gitops.redaction import redact

SECRET = "s3cr3tV4lue0123456789"


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: token {SECRET}",  # GitHub's scheme: only bearer and basic were known
        f"Authorization: Bearer {SECRET}",
        f'{{"Authorization": "Bearer {SECRET}"}}',  # a headers dict in an exception's text
        f"{{'Authorization': 'token {SECRET}'}}",
        f"authorization={SECRET}",
        f"request failed: Bearer {SECRET}",
        f"PRIVATE-TOKEN: {SECRET}",  # GitLab's header
        f"X-Api-Key: {SECRET}",
        f"api-key: {SECRET}",
        f'{{"api_key": "{SECRET}"}}',
        f"{{'password': '{SECRET}'}}",
        f"    token: {SECRET}",  # a kubeconfig's user, as YAML
        f"    client-key-data: {SECRET}",
        f"password%3D{SECRET}",  # a form body, URL-encoded once more
        f"git+https://{SECRET}@git.example.com/shop.git",
        f"https://user:{SECRET}@git.example.com/shop.git",
        f"access_token={SECRET}&x=1",
        f"Proxy-Authorization: Basic {SECRET}",  # hidden before 2026-12-07's patterns, and again now
        f"X-Authorization: Basic {SECRET}",
        f"Authorization: SSWS {SECRET}",  # Okta's scheme: any scheme word stays, its credential goes
        f"{{'Authorization': 'Bot {SECRET}'}}",
        f'    token: "{SECRET}"',  # YAML, quoted
        f"password: '{SECRET}'",
        f"{{'password': \"it's{SECRET}\"}}",  # Python's repr of a string holding a quote
        f'{{"password": "ab\\"{SECRET}"}}',  # an escaped quote inside the value
        f"api-key: ab,{SECRET}",
    ],
)
def test_a_secret_in_any_of_its_usual_shapes_is_hidden(text):
    assert SECRET not in redact(text), redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "configmaps/app.yaml:3: data.DB_PASSWORD: must be a string, got a mapping",
        "token: must be a string",
        "authorization failed for user ada",
        "the bearer of bad news",
        "X-Request-Id: 0123456789abcdef",
        "cluster prod unreachable: connection refused",
        "key=value",
        "bearer authentication failed",
        "private_key: Required value",
        "secret: Optional[str] = None",
    ],
)
def test_a_message_without_a_secret_is_left_as_it_is(text):
    assert redact(text) == text


def test_redaction_stays_linear_on_long_hostile_text():
    for text in ("Authorization" * 20_000, "x-" * 50_000 + ":", "'a': '" * 20_000, "%3D" * 40_000):
        started = time.perf_counter()
        redact(text)
        assert time.perf_counter() - started < 0.5, text[:20]
