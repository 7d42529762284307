"""Django settings, read from the environment (twelve-factor).

DATABASE_URL         PostgreSQL in production, e.g. postgres://user:pass@host:5432/sluice
CELERY_BROKER_URL    Celery broker; falls back to REDIS_URL
REDIS_URL            Redis for results, locks and caches
KUBECONFIG           kubeconfig path; unset means the in-cluster service account
SECRET_KEY           required unless DEBUG=1
ALLOWED_HOSTS        comma-separated host names
"""

import os
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
    "gitops",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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

REDIS_URL = env.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = env.get("CELERY_BROKER_URL") or REDIS_URL
CELERY_RESULT_BACKEND = env.get("CELERY_RESULT_BACKEND") or REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# A task is acknowledged only after it ran, so a worker killed mid-task leaves
# it on the queue for the next worker; every task is written to be re-run safely.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

KUBECONFIG = env.get("KUBECONFIG") or None
SLUICE_DATA_DIR = Path(env.get("SLUICE_DATA_DIR", BASE_DIR / ".data"))
SLUICE_FIELD_MANAGER = "sluice"
# The name recorded in the change log for the cluster this deployment manages.
SLUICE_CLUSTER_NAME = env.get("SLUICE_CLUSTER_NAME", "default")
SLUICE_APPLY_CONCURRENCY = int(env.get("SLUICE_APPLY_CONCURRENCY", "16"))
SLUICE_POLL_SWEEP_SECONDS = float(env.get("SLUICE_POLL_SWEEP_SECONDS", "5"))
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
# A task whose worker process died this many times while running it (killed, out of memory,
# crashed) is not started again: acks_late would otherwise hand it to the next worker forever.
SLUICE_MAX_TASK_DELIVERIES = env_int("SLUICE_MAX_TASK_DELIVERIES", 3)
# When set, /metrics wants "Authorization: Bearer <token>".
SLUICE_METRICS_TOKEN = env.get("SLUICE_METRICS_TOKEN", "")

CELERY_BEAT_SCHEDULE = {
    "poll-sources": {"task": "gitops.poll_sources", "schedule": SLUICE_POLL_SWEEP_SECONDS},
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
}
# Workers log through the same configuration instead of Celery's own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
LOGIN_URL = "dashboard:login"
LOGIN_REDIRECT_URL = "dashboard:overview"
LOGOUT_REDIRECT_URL = "dashboard:login"
