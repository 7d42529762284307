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
if pgrep -f "celery -A gitops worker.*demo-worker" >/dev/null || pgrep -f "runserver 127.0.0.1:$port" >/dev/null; then
  echo "demo left processes behind" >&2
  exit 1
fi
echo "demo smoke: ok"
