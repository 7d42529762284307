"""Django settings, read from the environment (twelve-factor).

DATABASE_URL         PostgreSQL in production, e.g. postgres://user:pass@host:5432/sluice
CELERY_BROKER_URL    Celery broker; falls back to REDIS_URL
REDIS_URL            Redis for results, locks and caches
KUBECONFIG           kubeconfig path; unset means the in-cluster service account
SLUICE_CLUSTER_IDENTITY  the default cluster's kube-system namespace uid; another cluster is then refused
SECRET_KEY           required unless DEBUG=1
SECRET_KEY_FALLBACKS earlier keys, comma-separated, still accepted while you rotate SECRET_KEY
ALLOWED_HOSTS        comma-separated host names
SLUICE_ALLOW_HTTP    1 turns off HTTPS-only cookies, HSTS and the redirect; local runs without TLS only
SLUICE_TRUST_X_FORWARDED_PROTO  1 behind a TLS-terminating proxy that sets X-Forwarded-Proto
"""

import ipaddress
import math
import os
import re
import warnings
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = os.environ


def env_bool(name: str, default: bool = False) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int, *, minimum: int = 1) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value.replace("_", ""))
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be a whole number of at least {minimum}, not {value!r}")
    return number


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG")
SECRET_KEY = env.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "development-only-insecure-key"  # noqa: S105 - only with DEBUG=1
# Keys a deployment must never run with: the placeholders shipped in docker/env.example.
PLACEHOLDER_SECRET_KEYS = frozenset({"change-me-to-a-long-random-string", "change-me"})
if SECRET_KEY in PLACEHOLDER_SECRET_KEYS:
    raise ImproperlyConfigured(
        "SECRET_KEY is still the placeholder from docker/env.example; set a long random value, e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )
# Rotation: the new key goes into SECRET_KEY, the old one here until sessions and stored
# webhook secrets made with it are gone or re-encrypted (`gitops reencrypt-secrets`).
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ninja",
    "axes",
    "gitops",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "dashboard.middleware.RefuseNulMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # After the messages' middleware: a refused task is said with a message on the page it came from.
    "dashboard.middleware.TaskNotQueuedMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its lockout answer.
    "axes.middleware.AxesMiddleware",
]

# django-axes first: it refuses a locked-out username+address before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "sluice.urls"
WSGI_APPLICATION = "sluice.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/sluice"),
        conn_max_age=int(env.get("DATABASE_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
# A dead database fails a connection within seconds instead of hanging a request (or /readyz).
DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
    "connect_timeout", int(env.get("DATABASE_CONNECT_TIMEOUT", "5"))
)
# A worker host that vanishes (power, partition) must not keep its session, and with it a source's
# advisory lock, for the two hours of Linux's default keepalive: PostgreSQL probes the connection after
# 30 s of silence and drops it after 3 unanswered probes (tcp_keepalives_*, settable per session), and
# the client does the same for a vanished server.
_KEEPALIVE = env_int("DATABASE_KEEPALIVE_SECONDS", 30, minimum=0)  # 0: leave both sides' defaults
if _KEEPALIVE:
    _DATABASE_OPTIONS = DATABASES["default"]["OPTIONS"]
    for _option, _value in (("keepalives", 1), ("keepalives_idle", _KEEPALIVE), ("keepalives_interval", 10)):
        _DATABASE_OPTIONS.setdefault(_option, _value)
    _DATABASE_OPTIONS.setdefault("keepalives_count", 3)
    # First, so that a DATABASE_URL's own -c values (PostgreSQL takes the last) still win.
    _DATABASE_OPTIONS["options"] = " ".join(
        [
            f"-c tcp_keepalives_idle={_KEEPALIVE} -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3",
            _DATABASE_OPTIONS.get("options", ""),
        ]
    ).strip()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
# WhiteNoise serves the dashboard's CSS and htmx on every documented path (sluice/staticfiles.py):
# what collectstatic wrote (the image: hashed names, gzip copies, cached for ever), or,
# when STATIC_ROOT holds no manifest (a checkout), the apps' own files, indexed once at start-up.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "sluice.staticfiles.CollectedOrAppStaticFiles"},
}
WHITENOISE_USE_FINDERS = not (STATIC_ROOT / "staticfiles.json").is_file()
# A checkout that never ran collectstatic has no STATIC_ROOT; that is expected, not worth a warning.
warnings.filterwarnings("ignore", message=r"No directory at: ", category=UserWarning)
WHITENOISE_AUTOREFRESH = DEBUG  # re-reading the apps' files on every request is for development only

REDIS_URL = env.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = env.get("CELERY_BROKER_URL") or REDIS_URL
CELERY_RESULT_BACKEND = env.get("CELERY_RESULT_BACKEND") or REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
# Celery's scheduler, touching beat's heartbeat file each round (its liveness probe reads it).
CELERY_BEAT_SCHEDULER = "gitops.celery:HeartbeatScheduler"
CELERY_ACCEPT_CONTENT = ["json"]
# A task is acknowledged only after it ran, so a worker killed mid-task leaves
# it on the queue for the next worker; every task is written to be re-run safely.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fixup closes every database connection before and after each task unless this is
# set (Celery 5.6 went back to that): a new PostgreSQL backend per task cost a no-op poll more CPU
# than the poll itself. Connections are kept, and gitops.celery closes them as Django does around a
# request (older than DATABASE_CONN_MAX_AGE, unusable, or left mid-transaction); the fixup still
# closes them every CELERY_DB_REUSE_MAX tasks.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000)

KUBECONFIG = env.get("KUBECONFIG") or None
SLUICE_DATA_DIR = Path(env.get("SLUICE_DATA_DIR", BASE_DIR / ".data"))
# Web and worker processes of a host share their metrics through this directory
# (prometheus_client's multiprocess mode). The client reads the variable when it
# is first imported, so it is settled here, before any app code runs.
PROMETHEUS_MULTIPROC_DIR = Path(env.get("PROMETHEUS_MULTIPROC_DIR") or SLUICE_DATA_DIR / "metrics")
PROMETHEUS_MULTIPROC_DIR.mkdir(parents=True, exist_ok=True)
env["PROMETHEUS_MULTIPROC_DIR"] = str(PROMETHEUS_MULTIPROC_DIR)
SLUICE_FIELD_MANAGER = "sluice"
# The name of the cluster KUBECONFIG names (the default cluster); others are registered (gitops add-cluster).
SLUICE_CLUSTER_NAME = env.get("SLUICE_CLUSTER_NAME", "default")
# The default cluster's identity (its kube-system namespace's uid), when the deployment states it: a client
# built from KUBECONFIG that reaches another cluster is then refused, as a registered cluster's is.
SLUICE_CLUSTER_IDENTITY = env.get("SLUICE_CLUSTER_IDENTITY", "").strip().lower()
if SLUICE_CLUSTER_IDENTITY and not re.fullmatch(
    r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", SLUICE_CLUSTER_IDENTITY
):
    raise ImproperlyConfigured(
        "SLUICE_CLUSTER_IDENTITY is the default cluster's kube-system namespace uid, like "
        "0b6f2a8e-3c1d-4e5f-9a7b-1c2d3e4f5a6b "
        "(kubectl get namespace kube-system -o jsonpath='{.metadata.uid}')"
    )
# Every call to a cluster is bounded: connect and read timeouts, and a deadline for listing all of a
# pass's namespaces; a cluster that misses them is unreachable for that pass and tried again after
# SLUICE_CLUSTER_RETRY_SECONDS (a rollout waiting for it, a rollback it still owes).
SLUICE_CLUSTER_CONNECT_TIMEOUT = float(env.get("SLUICE_CLUSTER_CONNECT_TIMEOUT", "3"))
SLUICE_CLUSTER_READ_TIMEOUT = float(env.get("SLUICE_CLUSTER_READ_TIMEOUT", "30"))
# A pass whose database session ended mid-pass (the reconcile lock goes with it) sends no write more than
# a second after it last showed the session alive (locks.PassFence). The next pass waits until that sign
# of life is this old, so that the lost pass's last writes have been answered or given up: the fence's
# second, a write's connect timeout twice (a failed connect is tried once more) and its read timeout.
# Lower it only with those timeouts: a write landing after it is seen as drift, not prevented.
SLUICE_PASS_TAKEOVER_SECONDS = env_int(
    "SLUICE_PASS_TAKEOVER_SECONDS",
    math.ceil(1 + 2 * SLUICE_CLUSTER_CONNECT_TIMEOUT + SLUICE_CLUSTER_READ_TIMEOUT),
    minimum=2,
)
SLUICE_CLUSTER_LIST_DEADLINE = float(env.get("SLUICE_CLUSTER_LIST_DEADLINE", "60"))
SLUICE_CLUSTER_RETRY_SECONDS = float(env.get("SLUICE_CLUSTER_RETRY_SECONDS", "10"))
SLUICE_APPLY_CONCURRENCY = int(env.get("SLUICE_APPLY_CONCURRENCY", "16"))
# "curl": server-side applies through libcurl (gitops/cluster/curl.py); "urllib3": the client's pool.
SLUICE_APPLY_TRANSPORT = env.get("SLUICE_APPLY_TRANSPORT", "curl")
if SLUICE_APPLY_TRANSPORT not in ("curl", "urllib3"):
    raise ImproperlyConfigured('SLUICE_APPLY_TRANSPORT must be "curl" or "urllib3"')
# A step waiting for its consumers watches them this long per pass, holding the source's lock.
SLUICE_CONSUMER_GATE_SLICE_SECONDS = float(env.get("SLUICE_CONSUMER_GATE_SLICE_SECONDS", "30"))
# Sources a worker process remembers parsed files and plan verdicts of, and the desired objects they
# may hold between them (least recently used out first, until both bounds hold). gitops/caches.py.
SLUICE_CACHED_SOURCES = int(env.get("SLUICE_CACHED_SOURCES", "4096"))
SLUICE_CACHED_OBJECTS = int(env.get("SLUICE_CACHED_OBJECTS", "200000"))
SLUICE_POLL_SWEEP_SECONDS = float(env.get("SLUICE_POLL_SWEEP_SECONDS", "5"))
# The live cache (`gitops live-cache`): a namespace is stale, and read instead, after this long
# without an event, a bookmark or a watch ending on time; watches end every WATCH seconds.
SLUICE_LIVE_CACHE_STALE_SECONDS = env_int("SLUICE_LIVE_CACHE_STALE_SECONDS", 30)
SLUICE_LIVE_CACHE_WATCH_SECONDS = env_int("SLUICE_LIVE_CACHE_WATCH_SECONDS", 10)
SLUICE_LIVE_CACHE_RELIST_SECONDS = env_int("SLUICE_LIVE_CACHE_RELIST_SECONDS", 600)
SLUICE_LIVE_CACHE_RESCAN_SECONDS = env_int("SLUICE_LIVE_CACHE_RESCAN_SECONDS", 5)
# auto: one watch per cluster, or one per namespace where RBAC grants no cluster-wide read;
# cluster: one per cluster, always; namespace: one per namespace (gitops.livecache.WatchScope).
SLUICE_LIVE_CACHE_SCOPE = env.get("SLUICE_LIVE_CACHE_SCOPE", "auto")
# auto, after a refusal: how often the cluster-wide read is tried again (RBAC granted it since).
SLUICE_LIVE_CACHE_SCOPE_RETRY_SECONDS = env_int("SLUICE_LIVE_CACHE_SCOPE_RETRY_SECONDS", 300)
# What a repository may make a worker read (README, "Limits"); gitops.desired.limits.Limits
# holds the same defaults and reads these names.
SLUICE_MAX_FILE_BYTES = env_int("SLUICE_MAX_FILE_BYTES", 2 * 1024 * 1024)
SLUICE_MAX_FILES = env_int("SLUICE_MAX_FILES", 20_000)
SLUICE_MAX_REVISION_BYTES = env_int("SLUICE_MAX_REVISION_BYTES", 64 * 1024 * 1024)
SLUICE_MAX_FILE_NODES = env_int("SLUICE_MAX_FILE_NODES", 100_000)
SLUICE_MAX_REVISION_NODES = env_int("SLUICE_MAX_REVISION_NODES", 500_000)
SLUICE_MAX_ALIASES = env_int("SLUICE_MAX_ALIASES", 1_000)
SLUICE_MAX_DEPTH = env_int("SLUICE_MAX_DEPTH", 64)
SLUICE_MAX_OBJECTS = env_int("SLUICE_MAX_OBJECTS", 100_000)
SLUICE_MAX_EXPANDED_BYTES = env_int("SLUICE_MAX_EXPANDED_BYTES", 128 * 1024 * 1024)
# What one fetch of a source (or a preview's) may write into its mirror, the first fetch's whole
# history included; git is stopped there (0: unbounded). Whoever can push decides how much arrives.
SLUICE_MAX_FETCH_BYTES = env_int("SLUICE_MAX_FETCH_BYTES", 512 * 1024 * 1024)
# What git may allocate while it fetches a source or maintains its mirror (0: unbounded): a small pack
# can hold objects that expand to gigabytes in memory. git stops there, not the worker.
SLUICE_MAX_GIT_MEMORY = env_int("SLUICE_MAX_GIT_MEMORY", 256 * 1024 * 1024)
# The known_hosts file ssh checks an ssh:// source's host key against (empty: ssh's defaults,
# ~/.ssh/known_hosts of the worker's account and /etc/ssh/ssh_known_hosts).
SLUICE_SSH_KNOWN_HOSTS = env.get("SLUICE_SSH_KNOWN_HOSTS", "")
# A task whose worker process died this many times while running it (killed, out of memory,
# crashed) is not started again: acks_late would otherwise hand it to the next worker forever.
SLUICE_MAX_TASK_DELIVERIES = env_int("SLUICE_MAX_TASK_DELIVERIES", 3)
# Commits of a rollout's range (since the last completed rollout, in the source's directory) read for its
# authors and committers; a longer range lets nobody approve where self-approval is forbidden.
SLUICE_SELF_APPROVAL_RANGE_COMMITS = env_int("SLUICE_SELF_APPROVAL_RANGE_COMMITS", 10_000)
# A person's sync (manual, or retrying a failed step) delivered longer than this after it was asked runs
# as an automatic one: Redis hands a killed worker's task back only after its visibility timeout (1 h).
# Longer than a sync waits for a busy source (BUSY_MAX_RETRIES, 10 minutes).
SLUICE_PERSONS_SYNC_STALE_SECONDS = env_int("SLUICE_PERSONS_SYNC_STALE_SECONDS", 1800, minimum=60)
# The Flags page marks a flag stale when it has not changed for this many days.
SLUICE_STALE_FLAG_DAYS = env_int("SLUICE_STALE_FLAG_DAYS", 30)
# A preview of any revision (gitops diff --revision, the dashboard, the API): a worker's fetch of the
# ref is bounded by this, and the web waits this long (and a little more) for the worker's answer.
SLUICE_PREVIEW_TIMEOUT_SECONDS = env_int("SLUICE_PREVIEW_TIMEOUT_SECONDS", 60)
# Previews one person may have waiting or running on the workers at once (0: no cap). Each fetches and
# plans a whole revision on the workers that reconcile, and any role may ask for one.
SLUICE_PREVIEWS_PER_USER = env_int("SLUICE_PREVIEWS_PER_USER", 2)
# Previews everyone together may have waiting or running on the workers at once (0: no cap): however
# many people ask, reconciles never queue behind more than this many.
SLUICE_PREVIEWS_TOTAL = env_int("SLUICE_PREVIEWS_TOTAL", 4)
# When set, /metrics wants "Authorization: Bearer <token>".
SLUICE_METRICS_TOKEN = env.get("SLUICE_METRICS_TOKEN", "")
# A port on which each worker serves its own /metrics (0: none), for workers that share no
# PROMETHEUS_MULTIPROC_DIR with the web (deploy/kubernetes: a pod each). Guarded as the web's.
SLUICE_WORKER_METRICS_PORT = env_int("SLUICE_WORKER_METRICS_PORT", 0, minimum=0)
# /readyz's answer to anonymous callers (a load balancer, a probe) is shared for this long by the web
# process's threads (``health.readiness_shared``), so that anyone's requests cannot pile checks up;
# 0: each runs its own. A user who may view sources, or the metrics token, always gets a fresh one.
SLUICE_READYZ_CACHE_SECONDS = float(env.get("SLUICE_READYZ_CACHE_SECONDS", "2"))
# Where sources' Git credentials may come from (README, "Managing sources"). A source's token is sent
# to the host its URL names, so the platform's own secrets never may; these narrow it further.
SLUICE_CREDENTIALS_ENV_PREFIX = env.get("SLUICE_CREDENTIALS_ENV_PREFIX", "")
SLUICE_CREDENTIALS_DIRS = [path for path in env.get("SLUICE_CREDENTIALS_DIRS", "").split(":") if path]

CELERY_BEAT_SCHEDULE = {
    # A sweep still queued three sweeps later (the workers are behind) is dropped: the next one claims
    # what is due then, and late sweeps no longer pile up behind the backlog they add to.
    "poll-sources": {
        "task": "gitops.poll_sources",
        "schedule": SLUICE_POLL_SWEEP_SECONDS,
        "options": {"expires": 3 * SLUICE_POLL_SWEEP_SECONDS},
    },
}

# JSON lines in production, readable text in development (LOG_FORMAT=json|text overrides).
LOG_FORMAT = env.get("LOG_FORMAT") or ("text" if DEBUG else "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "gitops.logs.ContextFilter"}},
    "formatters": {
        "json": {"()": "gitops.logs.JsonFormatter"},
        "text": {"()": "gitops.logs.TextFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]},
    },
    "root": {"handlers": ["console"], "level": env.get("LOG_LEVEL", "INFO")},
    # django-axes logs every login's bookkeeping at INFO; its lockouts come at WARNING.
    "loggers": {"axes": {"level": "WARNING"}},
}
# Workers log through the same configuration instead of Celery's own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
LOGIN_URL = "dashboard:login"
LOGIN_REDIRECT_URL = "dashboard:overview"
LOGOUT_REDIRECT_URL = "dashboard:login"

# -- HTTPS ------------------------------------------------------------------------------
# Production serves HTTPS only: secure cookies, HSTS and a redirect from http://. DEBUG or
# SLUICE_ALLOW_HTTP=1 (local runs on loopback without TLS, never a deployment) turn it off.
SLUICE_ALLOW_HTTP = env_bool("SLUICE_ALLOW_HTTP")
# Compare each prepared statement with the queryset Django compiles for the same values (gitops/prepared.py):
# twice the compiling, for tests.
SLUICE_PREPARED_CHECK = env_bool("SLUICE_PREPARED_CHECK")
HTTPS_ONLY = not (DEBUG or SLUICE_ALLOW_HTTP)
# /metrics names every source: a deployment serves it to the SLUICE_METRICS_TOKEN holder only, unless
# this says anyone may scrape it. Local runs (DEBUG, SLUICE_ALLOW_HTTP) default to public.
SLUICE_METRICS_PUBLIC = env_bool("SLUICE_METRICS_PUBLIC", default=not HTTPS_ONLY)
SESSION_COOKIE_SECURE = HTTPS_ONLY
CSRF_COOKIE_SECURE = HTTPS_ONLY
SECURE_SSL_REDIRECT = HTTPS_ONLY
SECURE_HSTS_SECONDS = int(env.get("SLUICE_HSTS_SECONDS", "31536000")) if HTTPS_ONLY else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SLUICE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SLUICE_HSTS_PRELOAD")
# Probes (kubelet, compose, load balancers) call these over plain HTTP inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
# Only behind a proxy that terminates TLS and overwrites X-Forwarded-Proto; trusting the
# header without one would let any client claim HTTPS.
if env_bool("SLUICE_TRUST_X_FORWARDED_PROTO"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SILENCED_SYSTEM_CHECKS = [
    # HSTS preload is a commitment for the whole domain (browser preload lists), for its
    # owner to make: SLUICE_HSTS_PRELOAD=1 sends it.
    "security.W021",
]

# -- login throttling (django-axes) -----------------------------------------------------
# After SLUICE_LOGIN_FAILURE_LIMIT failed logins for one username from one address, that
# pair is locked out (HTTP 429) for SLUICE_LOGIN_COOLOFF_MINUTES. API tokens are unaffected.
AXES_FAILURE_LIMIT = int(env.get("SLUICE_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=float(env.get("SLUICE_LOGIN_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# So is an address after this many failures for any usernames (password spraying), and a username after
# this many from any addresses (guessing one account from many); 0 turns either off
# (``dashboard.login_throttle``).
AXES_HANDLER = "dashboard.login_throttle.LoginThrottle"
# A login refused while locked out is not a failure: counted, one address could lock a username out for
# every address (100 tries, 95 of them refused) and keep it locked with one try a cool-off.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
SLUICE_LOGIN_ADDRESS_FAILURE_LIMIT = env_int("SLUICE_LOGIN_ADDRESS_FAILURE_LIMIT", 30, minimum=0)
SLUICE_LOGIN_USERNAME_FAILURE_LIMIT = env_int("SLUICE_LOGIN_USERNAME_FAILURE_LIMIT", 100, minimum=0)
# Proxies in front (an Ingress, a load balancer) that each append the address they were sent from to
# X-Forwarded-For: the lockout's address is then the client's, not the last proxy's. 0: REMOTE_ADDR.
SLUICE_TRUSTED_PROXIES = env_int("SLUICE_TRUSTED_PROXIES", 0, minimum=0)
# The networks those proxies connect from (CIDRs, comma-separated): X-Forwarded-For is believed only from
# them, so a client that reaches the web around the proxies cannot pick its own address. Empty: any.
SLUICE_TRUSTED_PROXY_NETWORKS = env_list("SLUICE_TRUSTED_PROXY_NETWORKS")
for _network in SLUICE_TRUSTED_PROXY_NETWORKS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(
            f"SLUICE_TRUSTED_PROXY_NETWORKS: {_network!r} is not a network ({_exc})"
        ) from None
AXES_CLIENT_IP_CALLABLE = "dashboard.client_address.client_address"
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "dashboard/locked_out.html"
# Successful logins are not kept (that table would grow without bound); failures are, per
# username+address, until the cool-off ends.
AXES_DISABLE_ACCESS_LOG = True
AXES_ENABLE_ACCESS_FAILURE_LOG = False
AXES_VERBOSE = False

# -- retention ----------------------------------------------------------------------------
# Days to keep each kind of record; `gitops purge` and a daily beat task delete older ones.
# The change log is never purged: `gitops archive-changes` moves old entries out on request.
SLUICE_RETAIN_WEBHOOK_DELIVERIES_DAYS = float(env.get("SLUICE_RETAIN_WEBHOOK_DELIVERIES_DAYS", "30"))
SLUICE_RETAIN_NOTIFICATIONS_DAYS = float(env.get("SLUICE_RETAIN_NOTIFICATIONS_DAYS", "30"))
SLUICE_RETAIN_INTENTS_DAYS = float(env.get("SLUICE_RETAIN_INTENTS_DAYS", "14"))
SLUICE_RETAIN_ROLLOUT_EVENTS_DAYS = float(env.get("SLUICE_RETAIN_ROLLOUT_EVENTS_DAYS", "180"))
# At most this many rejected webhook deliveries are recorded per source and minute; the
# rest are only counted in sluice_webhook_deliveries_total.
SLUICE_WEBHOOK_REJECTED_ROWS_PER_MINUTE = int(env.get("SLUICE_WEBHOOK_REJECTED_ROWS_PER_MINUTE", "20"))
# Hourly rather than daily: beat forgets its last run when it restarts, and a purge with
# nothing to delete costs a few indexed queries.
SLUICE_PURGE_INTERVAL_SECONDS = float(env.get("SLUICE_PURGE_INTERVAL_SECONDS", "3600"))
SLUICE_NOTIFICATION_SWEEP_SECONDS = float(env.get("SLUICE_NOTIFICATION_SWEEP_SECONDS", "60"))
CELERY_BEAT_SCHEDULE["purge-old-records"] = {
    "task": "gitops.purge_old_records",
    "schedule": SLUICE_PURGE_INTERVAL_SECONDS,
    # One not started by the next is dropped (the next does its work); one running skips the next.
    "options": {"expires": SLUICE_PURGE_INTERVAL_SECONDS},
}
CELERY_BEAT_SCHEDULE["sweep-notifications"] = {
    "task": "gitops.sweep_notifications",
    "schedule": SLUICE_NOTIFICATION_SWEEP_SECONDS,
    "options": {"expires": 3 * SLUICE_NOTIFICATION_SWEEP_SECONDS},
}
