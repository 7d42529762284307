"""Static files with DEBUG off (issue 14): a checkout serves the apps' files, the image its collected ones.

Each case runs in a fresh interpreter with the production settings (sluice.settings), as a
process started from a checkout or from the image would; Django's test client goes through
the whole middleware stack, WhiteNoise included. No database is needed: the login page of an
anonymous visitor queries none.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP_STATIC = ROOT / "dashboard/static/dashboard"
PRODUCTION = {
    "PATH": "/usr/bin:/bin",
    "DJANGO_SETTINGS_MODULE": "sluice.settings",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "testserver",
    "SLUICE_ALLOW_HTTP": "1",
}

FETCH = """
import json, re, sys
import django
django.setup()
from django.conf import settings
from django.test import Client

client = Client()
page = client.get("/login/").content.decode()
links = re.findall(r'(?:href|src)="(/static/[^"]+)"', page)
answers = {}
for link in links:
    response = client.get(link, HTTP_ACCEPT_ENCODING=sys.argv[1])
    body = b"".join(response.streaming_content) if response.streaming else response.content
    answers[link] = {
        "status": response.status_code,
        "type": response.get("Content-Type", ""),
        "encoding": response.get("Content-Encoding", ""),
        "cache": response.get("Cache-Control", ""),
        "body": body.decode("latin-1"),
    }
finders = getattr(settings, "WHITENOISE_USE_FINDERS", False)
print(json.dumps({"debug": settings.DEBUG, "finders": finders, "answers": answers}))
"""


def fetch_static(static_root: Path, accept_encoding: str = "") -> dict:
    done = subprocess.run(
        [sys.executable, "-c", FETCH, accept_encoding],
        env={**PRODUCTION, "STATIC_ROOT": str(static_root)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_a_checkout_without_collectstatic_serves_the_apps_css_and_htmx_with_debug_off(tmp_path: Path):
    fetched = fetch_static(tmp_path / "never-collected")

    assert (fetched["debug"], fetched["finders"]) == (False, True)
    answers = fetched["answers"]
    assert set(answers) == {"/static/dashboard/sluice.css", "/static/dashboard/htmx.min.js"}
    css, htmx = answers["/static/dashboard/sluice.css"], answers["/static/dashboard/htmx.min.js"]
    assert (css["status"], css["type"].split(";")[0]) == (200, "text/css")
    assert css["body"] == (APP_STATIC / "sluice.css").read_bytes().decode("latin-1")
    assert (htmx["status"], htmx["type"].split(";")[0]) == (200, "text/javascript")
    assert htmx["body"] == (APP_STATIC / "htmx.min.js").read_bytes().decode("latin-1")
    # Plain names may change with the next checkout: cached briefly, never "immutable".
    assert css["cache"] == "max-age=60, public"


def test_the_image_serves_what_collectstatic_wrote_hashed_compressed_and_cached_for_ever(tmp_path: Path):
    static_root = tmp_path / "collected"
    collected = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--no-input", "--verbosity", "0"],
        env={**PRODUCTION, "STATIC_ROOT": str(static_root)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert collected.returncode == 0, collected.stderr[-3000:]
    assert (static_root / "staticfiles.json").is_file()

    fetched = fetch_static(static_root, accept_encoding="gzip")

    assert fetched["finders"] is False
    answers = fetched["answers"]
    (css_link,) = [link for link in answers if link.endswith(".css")]
    (htmx_link,) = [link for link in answers if link.endswith(".js")]
    # Hashed names: sluice.<hash>.css, htmx.min.<hash>.js
    assert re.fullmatch(r"/static/dashboard/sluice\.[0-9a-f]{12}\.css", css_link), css_link
    assert re.fullmatch(r"/static/dashboard/htmx\.min\.[0-9a-f]{12}\.js", htmx_link), htmx_link
    for link in (css_link, htmx_link):
        answer = answers[link]
        assert (answer["status"], answer["encoding"]) == (200, "gzip"), link
        assert "immutable" in answer["cache"], answer["cache"]
        assert (static_root / link.removeprefix("/static/")).with_suffix(Path(link).suffix + ".gz").is_file()
