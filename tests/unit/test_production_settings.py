"""Production defaults (issue 10, section 5): HTTPS only, `check --deploy` clean, key rotation.

Each case runs in a fresh interpreter with only the environment it names, as a
deployment would start.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STRONG_KEY = secrets.token_urlsafe(50)
PRODUCTION = {"SECRET_KEY": STRONG_KEY, "ALLOWED_HOSTS": "sluice.example.com"}


def run(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *(["-c", code] if code else []), *args],
        env={"DJANGO_SETTINGS_MODULE": "sluice.settings", "PATH": "/usr/bin:/bin", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run("", env, "manage.py", *args)


HTTPS_SETTINGS = """
import json
import django
django.setup()
from django.conf import settings as s
print(json.dumps({
    "session_secure": s.SESSION_COOKIE_SECURE, "csrf_secure": s.CSRF_COOKIE_SECURE,
    "redirect": s.SECURE_SSL_REDIRECT, "hsts": s.SECURE_HSTS_SECONDS,
    "proxy_header": s.SECURE_PROXY_SSL_HEADER,
}))
"""


def https_settings(env: dict[str, str]) -> dict:
    loaded = run(HTTPS_SETTINGS, env)
    assert loaded.returncode == 0, loaded.stderr
    return json.loads(loaded.stdout)


def test_check_deploy_is_clean_with_the_production_defaults():
    checked = manage(PRODUCTION, "check", "--deploy", "--fail-level", "WARNING")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no issues" in checked.stdout
    assert "WARNINGS" not in checked.stderr


def test_production_is_https_only_with_hsts_and_no_trusted_proxy_header():
    assert https_settings(PRODUCTION) == {
        "session_secure": True,
        "csrf_secure": True,
        "redirect": True,
        "hsts": 31536000,
        "proxy_header": None,
    }


def test_allow_http_or_debug_turn_https_only_off_for_local_runs():
    for extra in ({"SLUICE_ALLOW_HTTP": "1"}, {"DEBUG": "1"}):
        loaded = https_settings({**PRODUCTION, **extra})
        assert loaded == {
            "session_secure": False,
            "csrf_secure": False,
            "redirect": False,
            "hsts": 0,
            "proxy_header": None,
        }, extra


WEBHOOK_URL_BEHIND_PROXY = """
import django
django.setup()
from django.test import RequestFactory
from django.urls import reverse
request = RequestFactory().get("/", HTTP_HOST="sluice.example.com", HTTP_X_FORWARDED_PROTO="https")
print(request.build_absolute_uri(reverse("dashboard:webhook", args=["shop"])))
"""


def test_behind_a_tls_proxy_the_webhook_url_shown_is_https_only_when_trusted():
    trusted = run(WEBHOOK_URL_BEHIND_PROXY, {**PRODUCTION, "SLUICE_TRUST_X_FORWARDED_PROTO": "1"})
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout.strip() == "https://sluice.example.com/webhooks/git/shop"
    # Without the opt-in any client could claim HTTPS with the header, so it is ignored.
    untrusted = run(WEBHOOK_URL_BEHIND_PROXY, PRODUCTION)
    assert untrusted.stdout.strip() == "http://sluice.example.com/webhooks/git/shop"


def test_the_placeholder_key_from_env_example_is_refused_at_start_up():
    example = (ROOT / "docker" / "env.example").read_text()
    placeholder = next(
        line.split("=", 1)[1] for line in example.splitlines() if line.startswith("SECRET_KEY=")
    )
    started = manage({"SECRET_KEY": placeholder, "ALLOWED_HOSTS": "x"}, "check")
    assert started.returncode != 0
    assert "SECRET_KEY is still the placeholder from docker/env.example" in started.stderr


ENCRYPT = """
import django
django.setup()
from gitops import secrets
print(secrets.encrypt("webhook-secret-0123456789"))
"""

DECRYPT = """
import sys
import django
django.setup()
from gitops import secrets
from gitops.errors import PermanentError
try:
    print(secrets.decrypt(sys.argv[1]))
except PermanentError as exc:
    print("unreadable:", exc)
"""


def test_a_rotated_secret_key_keeps_stored_webhook_secrets_readable_through_fallbacks():
    old_key, new_key = secrets.token_urlsafe(50), secrets.token_urlsafe(50)
    token = run(ENCRYPT, {**PRODUCTION, "SECRET_KEY": old_key}).stdout.strip()
    assert token

    rotated = run(
        DECRYPT, {**PRODUCTION, "SECRET_KEY": new_key, "SECRET_KEY_FALLBACKS": f"unrelated, {old_key}"}, token
    )
    assert rotated.stdout.strip() == "webhook-secret-0123456789", rotated.stderr
    forgotten = run(DECRYPT, {**PRODUCTION, "SECRET_KEY": new_key}, token)
    assert forgotten.stdout.startswith("unreadable:"), forgotten.stderr
    assert "SECRET_KEY_FALLBACKS" in forgotten.stdout
