"""Settings for the test suite: the production settings with test-only defaults."""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
os.environ.setdefault("ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")
# The test client, the browser tests and the workers talk plain HTTP on loopback.
os.environ.setdefault("SLUICE_ALLOW_HTTP", "1")
# A cluster that stopped answering is asked again this often (10 s deployed): the tests that bring one
# back wait for that retry.
os.environ.setdefault("SLUICE_CLUSTER_RETRY_SECONDS", "3")
# A pass taking over from one that lost its session (a worker killed mid-pass) waits this long (37 s
# deployed, from the cluster timeouts): the crash tests wait for it.
os.environ.setdefault("SLUICE_PASS_TAKEOVER_SECONDS", "5")
# /readyz answers each anonymous request afresh: the tests break a dependency and ask at once.
os.environ.setdefault("SLUICE_READYZ_CACHE_SECONDS", "0")
# Every prepared statement (gitops/prepared.py) is compared with what Django compiles for the same values.
os.environ.setdefault("SLUICE_PREPARED_CHECK", "1")

from sluice.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Tests never run collectstatic: WhiteNoise serves the apps' static files through the finders.
STATIC_ROOT = Path(tempfile.mkdtemp(prefix="sluice-static-"))
WHITENOISE_USE_FINDERS = True
