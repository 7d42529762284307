"""The malformed-input corpus: revisions a pusher could send that Sluice must refuse, file by file.

Each case is a good baseline revision with some files added or replaced (see malformed/README.md).
Static cases live in ``malformed/<case>/``: the files to lay over the baseline, and ``expect.yaml``
with the offending file, its line (null where the problem has none: a size, an encoding) and a part
of the message. Cases that would cost megabytes in Git (bombs, sizes, counts) are generated here
from the limits in force, so they sit just past each limit whatever an administrator set.

Files may say ``@ns-a@`` and ``@ns-b@``: the baseline's two target namespaces, replaced when a
case is laid out (the integration test's namespaces are random).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gitops.desired.errors import MAX_FILE_CHARS, clipped
from gitops.desired.limits import DEFAULT_LIMITS, Limits

MALFORMED = Path(__file__).parent / "malformed"
PLACEHOLDERS = ("@ns-a@", "@ns-b@")
POLICY = "sluice.yaml"
CONFIGMAP = "configmaps/app.yaml"
FLAGS = "flags/checkout.json"

BASELINE: dict[str, bytes] = {
    POLICY: b'targets:\n  namespaces: ["@ns-a@", "@ns-b@"]\nflags:\n  namespace: "@ns-a@"\n',
    CONFIGMAP: (
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  labels:\n    app: shop\n"
        b'data:\n  LOG_LEVEL: info\n  PORT: "8080"\n'
    ),
    FLAGS: (
        b'{\n  "flags": {\n    "new-checkout": {\n      "state": "ENABLED",\n'
        b'      "variants": {"on": true, "off": false},\n      "defaultVariant": "off"\n    }\n  }\n}\n'
    ),
}


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    files: Mapping[str, bytes]  # laid over the baseline
    file: str  # the offending file, as errors name it
    line: int | None  # its line, None where the problem has none
    message: str  # a part of the error's message
    generated: bool = False
    # Revision-wide limits cost what the largest allowed revision costs, not what one file does.
    revision_wide: bool = False
    removed: tuple[str, ...] = field(default=())  # baseline files the case leaves out

    def revision(self, namespaces: tuple[str, str] = ("team-a", "team-b")) -> dict[str, bytes]:
        """Every file of the revision, with the namespaces filled in."""
        files = {path: content for path, content in BASELINE.items() if path not in self.removed}
        files.update(self.files)
        return {path: _fill(content, namespaces) for path, content in files.items()}


def baseline_revision(namespaces: tuple[str, str] = ("team-a", "team-b")) -> dict[str, bytes]:
    """The good revision every case starts from, with the namespaces filled in."""
    return {path: _fill(content, namespaces) for path, content in BASELINE.items()}


def _fill(content: bytes, namespaces: tuple[str, str]) -> bytes:
    for placeholder, namespace in zip(PLACEHOLDERS, namespaces, strict=True):
        content = content.replace(placeholder.encode(), namespace.encode())
    return content


def static_cases() -> list[Case]:
    cases = []
    for directory in sorted(path for path in MALFORMED.iterdir() if path.is_dir()):
        expect = yaml.safe_load((directory / "expect.yaml").read_text())
        files = {
            path.relative_to(directory).as_posix(): path.read_bytes()
            for path in sorted(directory.rglob("*"))
            if path.is_file() and path.name != "expect.yaml"
        }
        cases.append(
            Case(
                directory.name,
                expect["description"],
                files,
                expect["file"],
                expect["line"],
                expect["message"],
            )
        )
    return cases


def all_cases(limits: Limits = DEFAULT_LIMITS) -> list[Case]:
    return static_cases() + generated_cases(limits)


def generated_cases(limits: Limits = DEFAULT_LIMITS) -> list[Case]:
    return [generate(limits) for generate in GENERATORS.values()]


def case_named(name: str, limits: Limits = DEFAULT_LIMITS) -> Case:
    """One case, built alone (a generated one without building the others)."""
    if name in GENERATORS:
        return GENERATORS[name](limits)
    (case,) = [case for case in static_cases() if case.name == name]
    return case


# -- generated cases ------------------------------------------------------------------------------

GENERATORS: dict[str, Callable[[Limits], Case]] = {}


def generator(name: str) -> Callable[[Callable[[Limits], Case]], Callable[[Limits], Case]]:
    def register(function: Callable[[Limits], Case]) -> Callable[[Limits], Case]:
        GENERATORS[name] = function
        return function

    return register


def _configmap(name: str, data: str = "") -> bytes:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n{data or '  A: x'}\n".encode()


@generator("size-file-over-limit")
def file_too_big(limits: Limits) -> Case:
    content = b"# padding\n" * (limits.max_file_bytes // 10 + 1)
    return Case(
        "size-file-over-limit",
        f"a file one line past max_file_bytes ({limits.max_file_bytes:,} bytes)",
        {"configmaps/big.yaml": content},
        "configmaps/big.yaml",
        None,
        "files are read up to",
        generated=True,
    )


@generator("size-too-many-files")
def too_many_files(limits: Limits) -> Case:
    # One content for all: Git stores one blob, and the count alone must refuse the revision.
    files = {f"configmaps/many/cm-{index:06d}.yaml": b"# empty\n" for index in range(limits.max_files)}
    in_scope = sorted([*BASELINE, *files])
    return Case(
        "size-too-many-files",
        f"more files in configmaps/ than max_files ({limits.max_files:,})",
        files,
        in_scope[limits.max_files],
        None,
        "files in sluice.yaml, configmaps/ and flags/",
        generated=True,
        revision_wide=True,
    )


@generator("size-revision-over-limit")
def revision_too_big(limits: Limits) -> Case:
    per_file = min(limits.max_file_bytes, limits.max_revision_bytes)
    content = (b"# padding\n" * (per_file // 10))[:per_file]
    count = limits.max_revision_bytes // len(content) + 1
    files = {f"configmaps/big/part-{index:04d}.yaml": content for index in range(count)}
    total, crossing = 0, ""
    revision = {**BASELINE, **files}
    for path in sorted(revision):
        if total <= limits.max_revision_bytes < total + len(revision[path]):
            crossing = path
            break
        total += len(revision[path])
    return Case(
        "size-revision-over-limit",
        f"files that add up past max_revision_bytes ({limits.max_revision_bytes:,})",
        files,
        crossing,
        None,
        "add up to more than",
        generated=True,
        revision_wide=True,
    )


@generator("values-file-over-limit")
def file_with_too_many_values(limits: Limits) -> Case:
    # A root list (value 1) of items; item k is value k + 1, on line k.
    content = b"- a\n" * (limits.max_file_nodes + 1)
    return Case(
        "values-file-over-limit",
        f"a list of more than max_file_nodes ({limits.max_file_nodes:,}) items",
        {"configmaps/list.yaml": content},
        "configmaps/list.yaml",
        limits.max_file_nodes,
        "builds more than",
        generated=True,
    )


@generator("values-empty-documents")
def many_empty_documents(limits: Limits) -> Case:
    # Each empty document is a null value: the count stops them too.
    return Case(
        "values-empty-documents",
        "more empty YAML documents than max_file_nodes",
        {"configmaps/empty.yaml": b"---\n" * (limits.max_file_nodes + 1)},
        "configmaps/empty.yaml",
        limits.max_file_nodes + 2,  # an empty document's null is marked where the next one starts
        "builds more than",
        generated=True,
    )


@generator("values-revision-over-limit")
def revision_with_too_many_values(limits: Limits) -> Case:
    # Files each within max_file_nodes that cross max_revision_nodes only with the last one,
    # whatever the (few hundred) values of the baseline add.
    count = limits.max_revision_nodes // limits.max_file_nodes + 2
    per_file = (limits.max_revision_nodes - 1000) // (count - 1)  # a root list and its items
    files = {f"configmaps/lists/part-{index:04d}.yaml": b"- a\n" * (per_file - 1) for index in range(count)}
    return Case(
        "values-revision-over-limit",
        f"files that together build more than max_revision_nodes ({limits.max_revision_nodes:,})",
        files,
        sorted(files)[-1],
        None,
        "the revision builds more than",
        generated=True,
        revision_wide=True,
    )


@generator("aliases-over-limit")
def too_many_aliases(limits: Limits) -> Case:
    # Line 1 anchors a scalar; line k + 1 holds alias k.
    content = b"- &a x\n" + b"- *a\n" * (limits.max_aliases + 1)
    return Case(
        "aliases-over-limit",
        f"more alias uses than max_aliases ({limits.max_aliases:,})",
        {"configmaps/aliases.yaml": content},
        "configmaps/aliases.yaml",
        limits.max_aliases + 2,
        "uses aliases more than",
        generated=True,
    )


@generator("aliases-doubling-chain")
def alias_chain(limits: Limits) -> Case:
    # Each line doubles the last: 2**n values from n short lines, refused at the value count.
    lines = ["a0: &a0 [x, x]"] + [f"a{n}: &a{n} [*a{n - 1}, *a{n - 1}]" for n in range(1, 64)]
    # Where the count passes the limit: the root, then per line a key, a list and two copies.
    built, size, line = 1, 3, 1
    while built + 1 + size <= limits.max_file_nodes:
        built, size, line = built + 1 + size, 1 + 2 * size, line + 1
    return Case(
        "aliases-doubling-chain",
        "64 anchors, each two aliases of the one before (2^64 values)",
        {"configmaps/chain.yaml": ("\n".join(lines) + "\n").encode()},
        "configmaps/chain.yaml",
        line,
        "builds more than",
        generated=True,
    )


def _deep(
    name: str, description: str, path: str, opening: bytes, middle: bytes, closing: bytes, limits: Limits
) -> Case:
    # 50,000 deep, or as deep as fits in a file, but always past the limit.
    fits = (limits.max_file_bytes - len(middle)) // (len(opening) + len(closing))
    depth = max(limits.max_depth + 1, min(50_000, fits))
    return Case(
        name,
        description,
        {path: opening * depth + middle + closing * depth},
        path,
        1,
        "nested more than",
        generated=True,
    )


@generator("depth-flow-sequence")
def deep_flow_sequence(limits: Limits) -> Case:
    return _deep(
        "depth-flow-sequence",
        "a flow sequence nested 50,000 deep (100 KB; it crashes libyaml's composer)",
        "configmaps/deep.yaml",
        b"[",
        b"",
        b"]",
        limits,
    )


@generator("depth-flow-mapping")
def deep_flow_mapping(limits: Limits) -> Case:
    return _deep(
        "depth-flow-mapping",
        "a flow mapping nested 50,000 deep",
        "configmaps/deep.yaml",
        b"{a: ",
        b"b",
        b"}",
        limits,
    )


@generator("depth-block-sequence")
def deep_block_sequence(limits: Limits) -> Case:
    return _deep(
        "depth-block-sequence",
        "a block sequence nested 50,000 deep on one line (- - - ...)",
        "configmaps/deep.yaml",
        b"- ",
        b"x\n",
        b"",
        limits,
    )


@generator("depth-json")
def deep_json(limits: Limits) -> Case:
    return _deep(
        "depth-json", "a JSON flag set nested 50,000 deep", FLAGS, b'{"flags": ', b"{}", b"}", limits
    )


@generator("values-json-without-yaml")
def json_values_without_lines(limits: Limits) -> Case:
    # A leading tab makes libyaml give up, so json's own parse would have to build it all.
    content = b"\t[" + b"[]," * (limits.max_file_nodes + 1) + b"[]]"
    return Case(
        "values-json-without-yaml",
        "JSON libyaml cannot read (a leading tab) holding more values than max_file_nodes",
        {FLAGS: content},
        FLAGS,
        None,
        "holds more than",
        generated=True,
    )


@generator("key-one-megabyte")
def huge_key(limits: Limits) -> Case:
    size = min(1024 * 1024, limits.max_file_bytes // 2)
    return Case(
        "key-one-megabyte",
        "a data key of a megabyte (its error message is clipped)",
        # An explicit key ("? "): an implicit one may not be longer than 1,024 characters.
        {CONFIGMAP: _configmap("app", f"  ? {'k' * size}\n  : x")},
        CONFIGMAP,
        6,
        "is not a valid key",
        generated=True,
    )


@generator("configmap-over-1mib")
def configmap_over_one_mebibyte(limits: Limits) -> Case:
    size = 1024 * 1024 + 1
    return Case(
        "configmap-over-1mib",
        "a ConfigMap whose data is over the apiserver's 1 MiB",
        {CONFIGMAP: _configmap("app", f"  BIG: {'x' * size}")},
        CONFIGMAP,
        1,
        "a ConfigMap holds at most",
        generated=True,
    )


@generator("base60-plain-scalar")
def base60_plain_scalar(limits: Limits) -> Case:
    # YAML 1.1's base-60 integer pattern backtracks on "1:1:1:..."; such a value is text, and too big.
    value = ":".join(["1"] * 700_000)
    return Case(
        "base60-plain-scalar",
        "a 1.4 MB plain scalar shaped like a YAML 1.1 base-60 integer",
        {CONFIGMAP: _configmap("app", f"  BIG: {value}")},
        CONFIGMAP,
        1,
        "a ConfigMap holds at most",
        generated=True,
    )


@generator("annotations-over-256kib")
def annotations_over_limit(limits: Limits) -> Case:
    value = "y" * (256 * 1024 + 1)
    content = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  annotations:\n"
        f"    note: {value}\ndata:\n  A: x\n"
    ).encode()
    return Case(
        "annotations-over-256kib",
        "annotations over the apiserver's 256 KiB",
        {CONFIGMAP: content},
        CONFIGMAP,
        5,
        "annotations exceed",
        generated=True,
    )


@generator("errors-five-hundred")
def many_errors(limits: Limits) -> Case:
    data = "\n".join(f"  K{index}: {index}" for index in range(500))
    return Case(
        "errors-five-hundred",
        "500 data values that are numbers (the report keeps the first 100)",
        {CONFIGMAP: _configmap("app", data)},
        CONFIGMAP,
        6,
        "value must be a string",
        generated=True,
    )


@generator("policy-too-many-namespaces")
def policy_too_many_namespaces(limits: Limits) -> Case:
    names = ", ".join(f'"ns-{index:04d}"' for index in range(1001))
    return Case(
        "policy-too-many-namespaces",
        "a policy with 1,001 target namespaces",
        {POLICY: f"targets:\n  namespaces: [{names}]\n".encode()},
        POLICY,
        2,
        "at most 1,000",
        generated=True,
    )


@generator("policy-too-many-steps")
def policy_too_many_steps(limits: Limits) -> Case:
    steps = "".join("    - pause: {duration: 1s}\n" for _ in range(101))
    return Case(
        "policy-too-many-steps",
        "a rollout of 101 steps",
        {POLICY: BASELINE[POLICY] + b"rollout:\n  steps:\n" + steps.encode()},
        POLICY,
        6,
        "at most 100",
        generated=True,
    )


@generator("objects-over-limit")
def too_many_objects(limits: Limits) -> Case:
    targets = min(1000, limits.max_objects)
    names = ", ".join(f'"ns-{index:04d}"' for index in range(targets))
    files = {
        f"configmaps/fan/cm-{index:04d}.yaml": _configmap(f"cm-{index:04d}")
        for index in range(limits.max_objects // targets + 1)
    }
    ordered = sorted([CONFIGMAP, *files])
    return Case(
        "objects-over-limit",
        f"ConfigMaps times target namespaces past max_objects ({limits.max_objects:,})",
        {POLICY: f"targets:\n  namespaces: [{names}]\nflags:\n  namespace: ns-0000\n".encode(), **files},
        ordered[limits.max_objects // targets],
        None,
        "expands to more than",
        generated=True,
        revision_wide=True,
    )


@generator("expanded-content-over-limit")
def too_much_expanded_content(limits: Limits) -> Case:
    # One file whose content, counted once for each of its target namespaces, passes the limit alone:
    # a ConfigMap under 1 MiB for 1,000 namespaces is 1 GiB in intents and request bodies.
    targets = min(1000, limits.max_objects // 2)
    value = "x" * (min(limits.max_file_bytes, 1024 * 1024) - 1024)
    assert len(value) * targets > limits.max_expanded_bytes, "the case needs a larger file or more targets"
    names = ", ".join(f'"ns-{index:04d}"' for index in range(targets))
    return Case(
        "expanded-content-over-limit",
        f"one file's content times its target namespaces past max_expanded_bytes "
        f"({limits.max_expanded_bytes:,})",
        {
            POLICY: f"targets:\n  namespaces: [{names}]\nflags:\n  namespace: ns-0000\n".encode(),
            "configmaps/fan/wide.yaml": _configmap("wide", f"  BIG: {value}"),
        },
        "configmaps/fan/wide.yaml",
        None,
        "counted once per target, passes",
        generated=True,
        revision_wide=True,
    )


@generator("path-too-long")
def path_too_long(limits: Limits) -> Case:
    # Four directories of 250 characters (a file system's most is 255): 1,023 characters in all.
    path = "configmaps/" + "/".join(f"{index}" + "d" * 249 for index in range(4)) + "/app.yaml"
    return Case(
        "path-too-long",
        "a ConfigMap whose path is 1,023 characters, past the 1,000 Sluice records with each change",
        {path: _configmap("long")},
        clipped(path, MAX_FILE_CHARS),  # as every error names a file
        None,
        "Sluice records at most 1,000",
        generated=True,
    )


@generator("flags-many-missing-references")
def many_bad_references(limits: Limits) -> Case:
    # Thousands of evaluators and thousands of $refs to missing ones: each miss once compared
    # itself with every evaluator name (quadratic), and listed them all.
    # About 60 bytes and 10 values for each evaluator and its missing twin.
    count = min(3000, (limits.max_file_bytes - 1000) // 60, (limits.max_file_nodes - 100) // 10)
    evaluators = ", ".join(f'"rule-{index}": {{"==": [1, 1]}}' for index in range(count))
    rules = ", ".join(f'{{"$ref": "missing-{index}"}}' for index in range(count))
    content = (
        '{\n  "$evaluators": {' + evaluators + '},\n  "flags": {\n    "new-checkout": {\n'
        '      "state": "ENABLED",\n      "variants": {"on": true, "off": false},\n'
        '      "defaultVariant": "off",\n      "targeting": {"if": [{"or": [' + rules + ']}, "on", "off"]}\n'
        "    }\n  }\n}\n"
    )
    return Case(
        "flags-many-missing-references",
        "3,000 $refs to missing evaluators among 3,000 defined ones",
        {FLAGS: content.encode()},
        FLAGS,
        8,
        "no evaluator",
        generated=True,
    )


@generator("file-name-not-utf8")
def name_not_utf8(limits: Limits) -> Case:
    return Case(
        "file-name-not-utf8",
        "a file name with a byte that is not UTF-8",
        {"configmaps/caf\udce9.yaml": _configmap("cafe")},
        "configmaps/caf\\xe9.yaml",
        None,
        "not UTF-8 text",
        generated=True,
    )


@generator("file-name-newline")
def name_with_newline(limits: Limits) -> Case:
    return Case(
        "file-name-newline",
        "a file name with a line break in it",
        {"configmaps/app\nINFO forged log line.yaml": _configmap("forged")},
        "configmaps/app\\nINFO forged log line.yaml",
        None,
        "control characters",
        generated=True,
    )
