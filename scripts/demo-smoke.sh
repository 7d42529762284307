#!/usr/bin/env bash
# CI smoke test of `make demo`: it starts, the pages answer, the member clusters are registered and
# reachable, a rollout waits for approval with its first wave (the default cluster) applied and its
# consumers restarted and healthy while the member clusters keep the first commit, and it stops cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v curl >/dev/null || { echo "demo smoke needs curl" >&2; exit 1; }
# A stack up before the demo (make stack) is not the demo's to stop, nor to be found stopped after it.
stack_was_up=0
if .venv/bin/python -m devstack status >/dev/null 2>&1; then stack_was_up=1; fi
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
# The first wave (demo-canary) restarted its shop Deployment, which is available again; the others wait.
status=$(. .stack/env && .venv/bin/python manage.py gitops status shop-config --json)
.venv/bin/python - "$status" <<'PY' || { echo "the paused rollout's consumers are not as expected" >&2; exit 1; }
import json, sys

rollout = json.loads(sys.argv[1])["active_rollout"]
states = rollout["consumer_states"]
print("consumers of the first wave:", ", ".join(f"{s['namespace']}/{s['name']} {s['detail']}" for s in states))
assert (rollout["waiting_for"], rollout["consumers"]) == ("approval", "restart"), rollout
assert [(s["namespace"], s["name"]) for s in states] == [("demo-canary", "shop")], states
assert all(s["restarted"] and s["health"] == "healthy" for s in states), states
PY
stamped=$(. .stack/env && kubectl get deployments -A -l app=shop \
  -o jsonpath='{range .items[*]}{.metadata.namespace}={.spec.template.metadata.annotations.sluice\.dev/config-hash}{" "}{end}')
echo "config-hash stamps: $stamped"
[[ " $stamped" =~ \ demo-canary=[0-9a-f]+\  ]] || { echo "demo-canary's shop should be restarted" >&2; exit 1; }
# Cluster by cluster: the first wave is the default cluster only; the member clusters keep the first commit.
clusters=$(. .stack/env && .venv/bin/python manage.py gitops clusters --json)
.venv/bin/python - "$clusters" <<'PY' || { echo "the clusters are not all registered and reachable" >&2; exit 1; }
import json, sys

clusters = {c["name"]: c for c in json.loads(sys.argv[1])}
print("clusters:", ", ".join(f"{name} {'reachable' if c['reachable'] else 'unreachable'}" for name, c in clusters.items()))
assert {"member-1", "member-2"} <= set(clusters) and all(c["reachable"] for c in clusters.values()), clusters
assert all("shop-config" in c["sources"] for c in clusters.values()), clusters
PY
for where in "local demo-canary 100" "member-1 demo-team-a 50" "member-2 demo-team-b 50"; do
  read -r context namespace items <<<"$where"
  found=$(. .stack/env && kubectl --context "$context" -n "$namespace" get configmap shop \
    -o jsonpath='{.data.application\.properties}' | grep -o 'max-items=[0-9]*')
  echo "$context/$namespace: $found"
  [[ $found == "max-items=$items" ]] || { echo "$context/$namespace should hold max-items=$items" >&2; exit 1; }
done

kill -TERM -- "-$demo"
wait "$demo" || true
trap - EXIT
# make exits on the signal at once; the demo's own trap then stops the worker,
# beat, web server and stack. Give that a deadline instead of racing it.
# The demo's own processes are those of the session setsid started (other Celery workers on
# this machine are not ours); the stack's processes are its own, and devstack knows them.
still_running() {
  pgrep -s "$demo" >/dev/null || { [[ $stack_was_up == 0 ]] && .venv/bin/python -m devstack status >/dev/null 2>&1; }
}
deadline=$((SECONDS + 90))
while still_running; do
  if (( SECONDS > deadline )); then
    echo "demo left processes behind:" >&2
    pgrep -a -s "$demo" >&2 || true
    .venv/bin/python -m devstack status >&2 || true
    exit 1
  fi
  sleep 0.5  # polling for a clean shutdown, with a deadline
done
echo "demo smoke: ok"
