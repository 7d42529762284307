#!/bin/sh
# Entrypoint of the Sluice image: the first argument is the role, the rest is
# passed on to the process of that role.
#
#   web      gunicorn serving sluice.wsgi:application on 0.0.0.0:8000
#   worker   celery -A gitops worker
#   beat     celery -A gitops beat (exactly one per deployment)
#   migrate  python manage.py migrate --no-input (run once per release)
#   manage   python manage.py ... (e.g. `manage gitops add-source ...`)
#
# Every role `exec`s, so the process of the role replaces this shell and gets
# SIGTERM directly (gunicorn and celery both shut down gracefully on it).
set -eu

role="${1:-}"
[ "$#" -gt 0 ] && shift

case "$role" in
  web)
    # Workers: gunicorn reads WEB_CONCURRENCY itself. The heartbeat files go to
    # /dev/shm (tmpfs) so a read-only or slow root filesystem cannot stall them.
    # Threads: a request that waits (a preview's plan, up to 90 s; a long export)
    # holds one thread, not the process, so the dashboard, the API, webhooks and
    # /healthz go on answering; the timeout is above the longest such wait.
    exec gunicorn sluice.wsgi:application \
      --bind 0.0.0.0:8000 \
      --worker-tmp-dir /dev/shm \
      --access-logfile - \
      --worker-class gthread \
      --threads "${SLUICE_WEB_THREADS:-8}" \
      --timeout "${SLUICE_WEB_TIMEOUT_SECONDS:-120}" \
      "$@"
    ;;
  worker)
    # Celery's default is the node's CPU count, not the container's: on a 32-core node, 32 processes
    # under a 1 GiB limit. Two unless told (--concurrency after it, or SLUICE_WORKER_CONCURRENCY).
    exec celery -A gitops worker --loglevel "${LOG_LEVEL:-INFO}" \
      --concurrency "${SLUICE_WORKER_CONCURRENCY:-2}" "$@"
    ;;
  beat)
    # Beat persists its schedule; the image's /app is read-only for this user, so
    # it goes to the data dir (a volume / emptyDir) unless told otherwise.
    exec celery -A gitops beat --loglevel "${LOG_LEVEL:-INFO}" \
      --schedule "${SLUICE_BEAT_SCHEDULE:-${SLUICE_DATA_DIR:-/var/lib/sluice}/celerybeat-schedule}" \
      "$@"
    ;;
  migrate)
    exec python manage.py migrate --no-input "$@"
    ;;
  manage)
    exec python manage.py "$@"
    ;;
  *)
    echo "sluice-entrypoint: unknown role '${role}'; expected one of: web, worker, beat, migrate, manage" >&2
    exit 64
    ;;
esac
