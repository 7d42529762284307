"""The limits on what a repository can make a worker read, and the loader's behaviour at them."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from gitops.desired.documents import Usage, load_json, load_yaml
from gitops.desired.errors import MAX_MESSAGE_CHARS, RevisionRejected, ValidationError
from gitops.desired.limits import DEFAULT_LIMITS, SETTINGS, Limits
from gitops.desired.policy import Policy
from gitops.desired.revision import ParseCache, ParsedFile, load_revision

ROOT = Path(__file__).resolve().parents[2]


def test_the_settings_hold_the_same_defaults_as_the_loader():
    from django.conf import settings

    assert Limits.from_settings(settings) == DEFAULT_LIMITS
    assert set(SETTINGS.values()) <= set(dir(settings))


def test_an_administrator_sets_each_limit_from_the_environment():
    script = (
        "from django.conf import settings\n"
        "from gitops.desired.limits import Limits\n"
        "print(Limits.from_settings(settings).max_file_bytes, settings.SLUICE_MAX_TASK_DELIVERIES)\n"
    )
    env = {
        "DJANGO_SETTINGS_MODULE": "sluice.settings",
        "SECRET_KEY": "x" * 50,
        "PATH": "/usr/bin:/bin",
        "SLUICE_MAX_FILE_BYTES": "1_000",
        "SLUICE_MAX_TASK_DELIVERIES": "5",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1000", "5"]

    env["SLUICE_MAX_DEPTH"] = "0"
    refused = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert "SLUICE_MAX_DEPTH must be a whole number of at least 1" in refused.stderr


def test_limits_refuse_nonsense():
    with pytest.raises(ValueError, match="SLUICE_MAX_FILES"):
        Limits(max_files=0)


def test_an_alias_builds_a_copy_of_its_value_and_points_at_the_alias_line():
    (document,), errors = load_yaml("a.yaml", b"base: &b {x: '1'}\nother: *b\n")
    assert errors == []
    assert document.data == {"base": {"x": "1"}, "other": {"x": "1"}}
    assert document.data["base"] is not document.data["other"]
    assert document.line_of("other", "x") == 2


def test_a_scalar_anchor_serves_as_a_key_and_anchors_belong_to_their_document():
    (document,), errors = load_yaml("a.yaml", b"name: &k port\nvalues:\n  *k : '80'\n")
    assert errors == []
    assert document.data["values"] == {"port": "80"}

    _, errors = load_yaml("a.yaml", b"a: &x 1\n---\nb: *x\n")
    assert [str(error) for error in errors] == [
        "a.yaml:3: the alias *x refers to no anchor &x defined before it"
    ]


def test_usage_counts_values_and_aliases():
    usage = Usage()
    load_yaml("a.yaml", b"a: &x [1, 2]\nb: *x\nc: *x\n", usage=usage)
    # root, three keys, the list and its two items, and two aliases of three values each
    assert (usage.nodes, usage.aliases) == (1 + 3 + 3 + 3 + 3, 2)


def test_aliases_of_a_long_string_cannot_build_more_than_twice_the_files_bound_of_text():
    """Each use of an alias of a scalar is one value, so a 2 MB flag set of 1,000 uses of a 2 MB string
    passed every bound and became a 2 GB flag set (15 s, 4 GB of a worker's memory, at every pass)."""
    import tracemalloc

    limits = Limits(max_file_bytes=100_000)
    uses = "".join(f"  v{index}: *a\n" for index in range(1, 1000))
    text = f'flags:\n  v0: &a "{"x" * 80_000}"\n{uses}'.encode()
    tracemalloc.start()
    try:
        _, errors = load_yaml("flags/x.yaml", text, limits=limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(error.line, error.message) for error in errors] == [
        (
            4,  # the text and two uses of it: 240,000
            "the file's values hold more than 200,000 characters of text (each use of an alias counts its "
            "whole value again) (setting SLUICE_MAX_FILE_BYTES)",
        )
    ]
    assert peak < 5_000_000, peak
    usage = Usage()
    shorter = text.replace(b"x" * 80_000, b"x" * 100).replace(uses.encode(), b"  v1: *a\n")
    assert load_yaml("f.yaml", shorter, limits=limits, usage=usage)[1] == []
    assert usage.chars == len("flags") + len("v0") + 100 + len("v1") + 100


def test_a_depth_of_the_limit_is_accepted_and_one_more_is_not():
    limits = Limits(max_depth=5)
    assert load_yaml("a.yaml", b"[[[[[1]]]]]", limits=limits)[1] == []
    _, errors = load_yaml("a.yaml", b"[[[[[[1]]]]]]", limits=limits)
    assert [error.message for error in errors] == [
        "lists and mappings are nested more than 5 deep (setting SLUICE_MAX_DEPTH)"
    ]


def test_an_alias_cannot_nest_its_value_past_the_depth_limit():
    limits = Limits(max_depth=4)
    _, errors = load_yaml("a.yaml", b"a: &x [[1]]\nb: [[*x]]\n", limits=limits)
    assert [(error.line, error.message) for error in errors] == [
        (2, "lists and mappings are nested more than 4 deep (setting SLUICE_MAX_DEPTH)")
    ]


def test_nul_bytes_and_broken_utf8_are_located():
    _, errors = load_yaml("a.yaml", b"a: 1\nb: 'x\x00'\n")
    assert [str(error) for error in errors] == [
        "a.yaml:2: the character U+0000 at column 6 is not allowed in this file "
        "(control characters and NUL bytes never are)"
    ]
    _, errors = load_json("a.json", b'{\n"a":\n"\xc3"}')
    assert [(error.line, error.message) for error in errors] == [
        (3, "not UTF-8 text: invalid continuation byte at byte 8")
    ]


def test_a_json_number_too_long_for_python_is_refused_with_its_line():
    _, errors = load_json("a.json", b'{\n  "a": ' + b"1" * 5000 + b"\n}")
    assert [(error.line, error.field) for error in errors] == [(2, "a")]


def test_long_repository_text_is_clipped_in_the_middle_of_a_message():
    error = ValidationError("a.yaml", 1, "data", f"{'k' * 10_000!r} is not a valid key (letters, digits)")
    assert len(error.message) == MAX_MESSAGE_CHARS
    assert error.message.startswith("'kkk")
    assert error.message.endswith("is not a valid key (letters, digits)")
    assert " … " in error.message


def test_a_rejection_reports_at_most_100_errors_and_how_many_it_left_out():
    errors = [ValidationError("a.yaml", line, "", "bad") for line in range(1, 501)]
    reported = RevisionRejected(errors).errors
    assert len(reported) == 101
    assert reported[-1] == ValidationError("a.yaml", 100, "", "... and 400 more errors not shown")


def test_a_mistake_repeated_in_every_target_costs_a_bounded_expansion_and_is_counted():
    # 40 ConfigMaps of one name for 1,000 targets: every one but the first is defined already in each
    # target. Those were 39,000 errors kept (5,000 ConfigMaps: 5,000,000), outside SLUICE_MAX_OBJECTS.
    targets = "".join(f"  - ns-{index:04d}\n" for index in range(1_000))
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\n"
    files = {
        "sluice.yaml": f"targets:\n  namespaces:\n{targets}".encode(),
        "configmaps/a.yaml": "---\n".join([manifest] * 40).encode(),
    }
    limits = Limits(max_objects=20_000)
    tracemalloc.start()
    try:
        with pytest.raises(RevisionRejected) as caught:
            load_revision(
                {path: path for path in files}, lambda ids: {i: files[i] for i in ids}, limits=limits
            )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024
    reported = caught.value.errors
    assert str(caught.value) == "19001 validation error(s)"  # repeats up to max_objects, and its own error
    assert reported[-1].message == "... and 18,901 more errors not shown"
    assert "expands to more than 20,000 ConfigMaps" in str(reported[0])


def test_the_parse_cache_is_bounded_by_the_values_it_holds():
    cache = ParseCache(max_nodes=1_000)
    for index in range(5):
        cache.put(f"f{index}", "blob", ParsedFile([], [], nodes=400))
    assert cache.nodes == 800
    assert cache.get("f0", "blob") is None
    assert cache.get("f4", "blob") is not None


def test_changing_the_limits_empties_the_parse_cache():
    cache = ParseCache()
    files = {"configmaps/a.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {A: x}\n"}
    load_revision({"configmaps/a.yaml": "1"}, lambda ids: {"1": files["configmaps/a.yaml"]}, cache=cache)
    with pytest.raises(RevisionRejected):
        load_revision(
            {"configmaps/a.yaml": "1"},
            lambda ids: {"1": files["configmaps/a.yaml"]},
            cache=cache,
            limits=Limits(max_file_nodes=3),
        )


@pytest.mark.parametrize("namespace", ["team-a", "team-b", "canary", "flags", "other", "team-", "teams-x"])
def test_allowed_namespaces_match_as_fnmatch_would(namespace: str):
    globs = ("team-?", "canary", "fl[a-z]gs", "*-x")
    assert Policy(allowed_namespaces=globs).allows(namespace) == any(
        fnmatch.fnmatchcase(namespace, glob) for glob in globs
    )
    assert not Policy(allowed_namespaces=()).allows(namespace)


def test_loading_keeps_nothing_once_the_documents_are_dropped():
    import gc
    import tracemalloc

    text = ("data:\n" + "".join(f"  key{index}: value-{index}\n" for index in range(1000))).encode()
    load_yaml("a.yaml", text)  # warm-up: caches of the re module and the like
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            load_yaml("a.yaml", text)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # PyYAML's constructor, used on its own, remembered every scalar it ever built (several MB here).
    assert grown < 100_000


def test_the_parse_cache_is_bounded_in_bytes_too():
    from gitops.desired.revision import ParseCache, ParsedFile

    cache = ParseCache(max_bytes=1000)
    for index in range(10):
        cache.put(f"configmaps/f{index}.yaml", f"{index:040x}", ParsedFile([], [], 1), 300)
    assert cache.bytes == 900
    assert cache.get("configmaps/f9.yaml", f"{9:040x}") is not None
    assert cache.get("configmaps/f0.yaml", f"{0:040x}") is None, "the oldest went first"


def test_a_tag_on_a_key_is_refused_as_on_a_value():
    """`!vault k: v` and `!!python/name:os.system x: y` loaded as keys "k" and "x"."""
    _, errors = load_yaml(
        "a.yaml", b"data:\n  !vault k: v\n  !!python/name:os.system x: y\n  !!str ok: fine\n"
    )
    assert [(error.line, error.field, error.message) for error in errors] == [
        (2, "data", "the tag '!vault' is not supported on a key; write a plain key"),
        (
            3,
            "data",
            "the tag 'tag:yaml.org,2002:python/name:os.system' is not supported on a key; write a plain key",
        ),
    ]


def _hostile_refs(count: int) -> bytes:
    """A flag set whose targeting names ``count`` evaluators that do not exist, each a near miss of 200
    defined names of 99 characters sharing a prefix: a suggestion for each cost 0.3 s."""
    import json

    prefix = "e" * 88
    evaluators = {f"{prefix}{index:05d}abcdef": {"in": ["a", "b"]} for index in range(200)}
    references = [{"$ref": f"{prefix}abcde zzz{index % 7}"} for index in range(count)]
    flag = {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"if": [{"or": references}, "on", "off"]},
    }
    return json.dumps({"$evaluators": evaluators, "flags": {"f": flag}}).encode()


def test_a_file_keeps_its_first_100_errors_and_counts_the_rest_unbuilt(monkeypatch):
    """300 unknown $refs in one file (18,000 fit in its 2 MiB): each error built (a suggestion looked for
    among 200 long names) was 0.3 s of CPU, and each kept a few KB. The file keeps its first 100 and counts
    the rest, and the revision says how many it left out."""
    from gitops.desired import flags
    from gitops.desired.revision import parse_file

    built = []
    real = flags._did_you_mean
    monkeypatch.setattr(flags, "_did_you_mean", lambda *args: built.append(args) or real(*args))
    content = _hostile_refs(300)

    parsed = parse_file("flags/refs.json", content)

    assert (len(parsed.errors), parsed.unlisted) == (100, 200)
    assert len(built) == 100, "no message built past the first 100"
    assert all(error.field.endswith('["$ref"]') for error in parsed.errors)
    with pytest.raises(RevisionRejected) as caught:
        load_revision({"flags/refs.json": "1"}, lambda ids: {"1": content})
    assert str(caught.value) == "300 validation error(s)"
    assert caught.value.errors[-1].message == "... and 200 more errors not shown"
    assert len(caught.value.errors) == 101, "every error kept is shown, then how many are not"


def test_a_suggestion_is_looked_for_only_while_the_comparison_is_cheap():
    from gitops.desired.flags import _did_you_mean

    names = [f"{'e' * 88}{index:05d}abcdef" for index in range(200)]
    assert _did_you_mean(f"{'e' * 88}00001abcdeg", names) == "", "99 x 200 x 99 characters: not looked for"
    assert _did_you_mean("internal-user", ["internal-users", "beta"]) == ' (did you mean "internal-users"?)'


def test_a_manifest_file_lists_its_first_100_errors_across_its_documents():
    from gitops.desired.revision import parse_file

    document = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {A: 1, B: 2, C: 3}\n"
    parsed = parse_file("configmaps/a.yaml", "---\n".join([document] * 50).encode())
    assert (len(parsed.errors), parsed.unlisted) == (100, 50) and not parsed.items
    assert all("value must be a string" in error.message for error in parsed.errors)


def test_parsing_stops_once_the_files_before_hold_more_than_1000_errors_and_none_of_them_is_kept():
    """5,000 files of 50 errors each (two values an error) fit the value limits: 250,000 errors, about
    600 MB, were held at once. Parsing stops past 1,000 and names the file it stopped at; a file with
    errors is kept for the rest of the load only (one without stays in the parse cache)."""
    document = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app%d}\ndata: {%s}\n"
    bad = {
        f"configmaps/f{index:04d}.yaml": (
            document % (index, ", ".join(f"K{k}: {k}" for k in range(50)))
        ).encode()
        for index in range(5_000)
    }
    good = {"configmaps/a.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {A: x}\n"}
    files = {**good, **bad}
    cache = ParseCache()
    tracemalloc.start()
    try:
        with pytest.raises(RevisionRejected) as caught:
            load_revision({path: path for path in files}, lambda ids: {i: files[i] for i in ids}, cache=cache)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024, f"{peak / 2**20:.0f} MiB"
    stopped = ValidationError(
        "configmaps/f0021.yaml",
        None,
        "",
        "not checked, nor the files after it: those before it hold more than 1,000 errors; "
        "mend them and push again",
    )
    assert caught.value.errors[-1] == stopped, "said last, whatever is left out"
    assert caught.value.errors[-2].message == "... and 950 more errors not shown"
    assert str(caught.value) == "1050 validation error(s)"
    assert cache.get("configmaps/f0000.yaml", "configmaps/f0000.yaml") is not None, "for the whole load"
    cache.forget_failed()
    assert cache.get("configmaps/a.yaml", "configmaps/a.yaml") is not None
    assert cache.get("configmaps/f0000.yaml", "configmaps/f0000.yaml") is None


def test_a_rejections_notification_keeps_its_last_error_whatever_it_cuts():
    """Where the checks stopped, or how many errors were left out, is said last: a notification of the
    first 50 cut it."""
    from gitops.fetch.revisions import NOTIFIED_ERRORS, _notified

    errors = [ValidationError("a.yaml", line, "", "bad") for line in range(1, 101)]
    stopped = ValidationError("b.yaml", None, "", "not checked, nor the files after it: …")
    notified = _notified([*errors, stopped])
    assert len(notified) == NOTIFIED_ERRORS == 50
    assert notified[-1] == stopped and notified[:-1] == errors[:49]
    assert _notified(errors[:3]) == errors[:3]
