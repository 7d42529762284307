#!/usr/bin/env bash
# `make test`'s pytest runs: the unit tests beside the integration tests, not after them.
#
# The unit tests are pure and CPU-bound, and need no stack; the integration tests spend most of
# their time waiting (on a worker, the apiserver, a browser), about 0.7 of a core on average. Run
# one after the other on 2 cores, the suite took the sum of the two; side by side it takes about the
# integration tests' time. Both must pass; the unit tests' report follows the integration tests'.
# SLUICE_TESTS_SERIAL=1 runs them one after the other. Arguments go to the integration run.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}

if [[ ${SLUICE_TESTS_SERIAL:-0} == 1 ]]; then
    "$BIN/pytest" tests/unit && "$BIN/pytest" tests/integration "$@"
    exit
fi

unit_log=$(mktemp -t sluice-unit-tests-XXXXXX.log)
# Lower priority: the integration tests wait on deadlines, the unit tests on nothing.
nice -n 5 "$BIN/pytest" tests/unit >"$unit_log" 2>&1 &
unit=$!
trap 'kill "$unit" 2>/dev/null; rm -f "$unit_log"' EXIT

"$BIN/pytest" tests/integration "$@"
integration_status=$?
wait "$unit"
unit_status=$?
echo
echo "== the unit tests (run beside the integration tests): exit status $unit_status"
cat "$unit_log"
if ((integration_status != 0 || unit_status != 0)); then
    echo "FAILED: integration tests exit $integration_status, unit tests exit $unit_status" >&2
    exit 1
fi
