#!/usr/bin/env bash
# CI smoke test of `make demo`: it starts, the pages answer, a rollout waits for approval, and it stops cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=test-artifacts/demo-smoke.log
mkdir -p test-artifacts
SLUICE_DEMO_PORT=$port setsid make demo >"$log" 2>&1 &
demo=$!
cleanup() { kill -TERM -- "-$demo" 2>/dev/null || true; }
trap cleanup EXIT

deadline=$((SECONDS + 600))
until curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
  if ! kill -0 "$demo" 2>/dev/null; then echo "demo exited early; see $log" >&2; tail -30 "$log" >&2; exit 1; fi
  if (( SECONDS > deadline )); then echo "demo did not answer within 600 s; see $log" >&2; exit 1; fi
  sleep 0.5  # polling a server that is starting, with a deadline
done
curl -fsS "http://127.0.0.1:$port/readyz"; echo
curl -fsS -o /dev/null -w "login page: %{http_code}\n" "http://127.0.0.1:$port/login/"
grep -q "waiting for approval" "$log" || { echo "the demo has no rollout waiting for approval" >&2; exit 1; }

kill -TERM -- "-$demo"
wait "$demo" || true
trap - EXIT
# make exits on the signal at once; the demo's own trap then stops the worker,
# beat, web server and stack. Give that a deadline instead of racing it.
still_running() {
  pgrep -f "celery -A gitops (worker|beat)" >/dev/null \
    || pgrep -f "runserver 127.0.0.1:$port" >/dev/null \
    || .venv/bin/python -m devstack status >/dev/null 2>&1
}
deadline=$((SECONDS + 90))
while still_running; do
  if (( SECONDS > deadline )); then
    echo "demo left processes behind:" >&2
    pgrep -fa "celery -A gitops|runserver|kube-apiserver|redis-server" >&2 || true
    exit 1
  fi
  sleep 0.5  # polling for a clean shutdown, with a deadline
done
echo "demo smoke: ok"
