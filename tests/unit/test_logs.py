"""Structured logs: JSON or text, with reconcile context, and no secrets."""

import json
import logging

from gitops.logs import ContextFilter, JsonFormatter, TextFormatter, add_context, log_context, redact


def record(message: str, *args) -> logging.LogRecord:
    entry = logging.LogRecord("gitops.test", logging.INFO, __file__, 1, message, args, None)
    ContextFilter().filter(entry)
    return entry


def test_json_lines_carry_the_reconcile_context():
    with log_context(source="shop"):
        add_context(commit="a" * 40, rollout=7)
        line = json.loads(JsonFormatter().format(record("applied %d changes", 3)))
    assert line["message"] == "applied 3 changes"
    assert (line["source"], line["commit"], line["rollout"], line["level"]) == ("shop", "a" * 40, "7", "info")
    outside = json.loads(JsonFormatter().format(record("idle")))
    assert "source" not in outside


def test_text_lines_are_readable_with_the_same_context():
    with log_context(source="shop", rollout=3):
        text = TextFormatter().format(record("paused"))
    assert "[source=shop rollout=3] paused" in text


def test_secrets_never_reach_a_line():
    leaky = (
        "fetch https://deploy:hunter2@git.example.com/x.git failed; Authorization: Bearer abc.def "
        "token=s3cr3t&x=1 used sluice_0123abcd_verysecretpart"
    )
    cleaned = redact(leaky)
    for secret in ("hunter2", "abc.def", "s3cr3t", "verysecretpart"):
        assert secret not in cleaned
    assert "https://deploy:***@git.example.com/x.git" in cleaned
    assert "hunter2" not in JsonFormatter().format(record("url %s", "https://u:hunter2@h/x"))
