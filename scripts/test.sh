#!/usr/bin/env bash
# `make test`'s pytest runs: the unit tests beside the integration tests, not after them.
#
# The unit tests are pure and CPU-bound, and need no stack; the integration tests spend most of
# their time waiting (on a worker, the apiserver, a browser), about 0.7 of a core on average. Run
# one after the other on 2 cores, the suite took the sum of the two; side by side it takes about the
# integration tests' time. Both must pass; the unit tests' report follows the integration tests'.
#
# The integration tests themselves run as two pytest sessions on the one stack (pytest-xdist's
# `-n 2`; tests/parallel.py says what each session has of its own and which tests run alone), as
# one session left most of a core idle while it waited. SLUICE_TEST_SESSIONS=1 runs one session.
# The stack is started here, once, before the sessions, and stopped at the end unless it was
# already running (`make stack`) or SLUICE_KEEP_STACK=1.
# SLUICE_TESTS_SERIAL=1 runs everything one after the other, in one session. Arguments go to the
# integration run.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}

if [[ ${SLUICE_TESTS_SERIAL:-0} == 1 ]]; then
    "$BIN/pytest" tests/unit && "$BIN/pytest" tests/integration "$@"
    exit
fi

sessions=${SLUICE_TEST_SESSIONS:-2}
unit_log=$(mktemp -t sluice-unit-tests-XXXXXX.log)
# Lower priority: the integration tests wait on deadlines, the unit tests on nothing.
nice -n 5 "$BIN/pytest" tests/unit >"$unit_log" 2>&1 &
unit=$!
stack_started_here=0
finish() {
    kill "$unit" 2>/dev/null
    rm -f "$unit_log"
    if ((stack_started_here)) && [[ ${SLUICE_KEEP_STACK:-0} != 1 ]]; then
        "$BIN/python" -m devstack down >/dev/null
    fi
}
trap finish EXIT

if ((sessions > 1)); then
    if ! "$BIN/python" -m devstack status >/dev/null 2>&1; then
        stack_started_here=1
        "$BIN/python" -m devstack up || exit 1
    fi
    # loadfile: a module's tests run in one session, in order. (pytest-xdist 3.8's loadgroup split a
    # marked group across both sessions under pytest 9: its nodeid suffix does not take.)
    "$BIN/pytest" -n "$sessions" --dist loadfile tests/integration "$@"
else
    "$BIN/pytest" tests/integration "$@"
fi
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
