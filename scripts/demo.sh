#!/usr/bin/env bash
# Runs Sluice on the embedded stack: starts the stack, migrates, creates a demo
# login, then runs a Celery worker, beat and the web server until interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."

py=.venv/bin/python
port=${SLUICE_DEMO_PORT:-8000}

# A stack that was already up (make stack, a test session) is left up when the demo ends.
started_stack=1
if $py -m devstack status >/dev/null 2>&1; then started_stack=0; fi
$py -m devstack up
stop_stack() {
  if [[ $started_stack == 1 && ${SLUICE_DEMO_KEEP_STACK:-0} != 1 ]]; then $py -m devstack down; fi
}
# Until the demo's own processes run: a migration or seed that fails, or a Ctrl-C meanwhile, stops the
# stack it started (its processes are sessions of their own: nothing else would reach them).
trap 'trap - EXIT; stop_stack' EXIT
trap 'exit 130' INT TERM
# shellcheck disable=SC1091
. .stack/env
# Plain http://127.0.0.1 without TLS: a local run, so HTTPS-only cookies and redirects are off.
export DEBUG=1 SLUICE_ALLOW_HTTP=1 DJANGO_SETTINGS_MODULE=sluice.settings
export SLUICE_DATA_DIR=$PWD/.stack/data
mkdir -p "$SLUICE_DATA_DIR"

$py manage.py migrate --no-input
# A sample repository, a source, and a rollout waiting for the visitor's approval.
$py scripts/demo_seed.py

pids=()
stop() {
  # Ignore, not reset: a second SIGTERM (from make, or the process group) must not cut the
  # shutdown short before the stack is stopped.
  trap "" INT TERM
  trap - EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
  stop_stack
}
trap stop INT TERM EXIT

.venv/bin/celery -A gitops worker --loglevel=INFO --concurrency=2 --hostname "demo-worker@%h" &
pids+=($!)
.venv/bin/celery -A gitops beat --loglevel=INFO --schedule "$SLUICE_DATA_DIR/celerybeat-schedule" &
pids+=($!)
# Watches the demo's ConfigMaps: a `kubectl edit` of one is reported (or healed) within a second.
$py manage.py gitops live-cache &
pids+=($!)
$py manage.py runserver "127.0.0.1:$port" --noreload &
pids+=($!)

echo
echo "Sluice is running at http://127.0.0.1:$port/  (log in as demo / demo)"
echo "A canary of the shop configuration is paused, waiting for your approval. It goes cluster by"
echo "cluster: its first wave reached the default cluster's demo-canary (and restarted the shop Deployment"
echo "there); each promote takes it to the next member cluster (member-1, then member-2)."
echo "kubectl for the embedded clusters: . .stack/env && kubectl --context member-1 get configmaps -A -l app=shop"
echo "The clusters: .venv/bin/python manage.py gitops clusters"
echo "Press Ctrl-C to stop."
wait -n "${pids[@]}"
