"""The repository's own policy file, ``sluice.yaml``.

Unknown fields are errors (with a "did you mean"), because a misspelt
``selfHeal`` silently doing nothing is worse than a rejected revision.
"""

from __future__ import annotations

import difflib
import fnmatch
import itertools
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, Final

from gitops.desired.documents import Document, PathKey, Usage, dotted, load_yaml
from gitops.desired.errors import ValidationError
from gitops.desired.limits import DEFAULT_LIMITS, Limits
from gitops.durations import EXAMPLES, duration_seconds

POLICY_FILE = "sluice.yaml"
DEFAULT_NAMESPACE = "default"
# The cluster ``targets: {namespaces: [...]}`` means when nothing else names it (SLUICE_CLUSTER_NAME).
DEFAULT_CLUSTER = "default"

# RFC 1123 label: what Kubernetes accepts as a namespace name.
NAMESPACE_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
NAMESPACE_GLOB_PATTERN = re.compile(r"^[a-z0-9*?\[\]-]+\Z")
# A policy is small; these bounds keep a hostile one from costing quadratic time
# (every object is checked against every glob) or an endless rollout.
MAX_NAMESPACES: Final = 1_000  # in targets.namespaces and in allowedNamespaces
MAX_TARGET_CLUSTERS: Final = 100  # entries in a targets list
MAX_TARGETS: Final = 1_000  # (cluster, namespace) pairs in all
MAX_STEPS: Final = 100
MAX_SUGGESTION_CHARS: Final = 100
TARGETS_SHAPE: Final = "must be a non-empty list of {cluster, namespaces}, or a mapping with namespaces"


@dataclass(frozen=True)
class SetWeight:
    weight: int

    def as_json(self) -> dict[str, Any]:
        return {"setWeight": self.weight}


@dataclass(frozen=True)
class Pause:
    seconds: int | None  # None waits until someone promotes

    def as_json(self) -> dict[str, Any]:
        return {"pause": {} if self.seconds is None else {"duration": self.seconds}}


@dataclass(frozen=True)
class Analysis:
    url: str
    timeout_seconds: float = 5.0
    failure_limit: int = 1
    interval_seconds: int = 10
    # Where the URL is written in sluice.yaml, for errors about it; not part of the step.
    line: int | None = field(default=None, compare=False)
    # Its place in sluice.yaml's rollout.steps, which a step that failed to parse leaves out of the policy's.
    step_index: int | None = field(default=None, compare=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "analysis": {
                "http": {"url": self.url, "timeoutSeconds": self.timeout_seconds},
                "failureLimit": self.failure_limit,
                "interval": self.interval_seconds,
            }
        }


Step = SetWeight | Pause | Analysis


class OnNewRevision(StrEnum):
    """What a new commit does to a rollout still under way."""

    SUPERSEDE = "supersede"  # roll it back and start the new one
    QUEUE = "queue"  # let it finish; the newest commit goes next


class ConsumerMode(StrEnum):
    """What a ConfigMap step does to the workloads that read a changed ConfigMap."""

    IGNORE = "ignore"  # nothing: a step writes objects
    WATCH = "watch"  # the step waits until they are healthy
    RESTART = "restart"  # the step restarts them (a stamp on their pod template), then waits


DEFAULT_HEALTH_TIMEOUT_SECONDS = 300
MAX_HEALTH_TIMEOUT_SECONDS = 3600


@dataclass(frozen=True)
class RolloutSpec:
    steps: tuple[Step, ...] = (SetWeight(100),)
    on_new_revision: OnNewRevision = OnNewRevision.SUPERSEDE
    consumers: ConsumerMode = ConsumerMode.IGNORE
    health_timeout_seconds: int = DEFAULT_HEALTH_TIMEOUT_SECONDS


@dataclass(frozen=True)
class ApprovalSpec:
    required: int = 1
    forbid_self_approval: bool = False


@dataclass(frozen=True)
class Target:
    """One entry of ``targets``: a cluster and its namespaces, in policy order."""

    cluster: str
    namespaces: tuple[str, ...]
    # Where sluice.yaml names the cluster (line, field), for errors about it.
    line: int | None = field(default=None, compare=False)
    field_name: str = field(default="targets", compare=False)
    # Where sluice.yaml lists each namespace (field, line), in the order of ``namespaces``, for errors
    # about one of them; empty for the target a policy gets when it names none.
    namespace_places: tuple[tuple[str, int | None], ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Policy:
    # Empty only before ``_with_defaults``: then the default namespace of the default cluster.
    targets: tuple[Target, ...] = ()
    allowed_namespaces: tuple[str, ...] = ()
    prune: bool = False
    self_heal: bool = False
    flags_namespace: str = DEFAULT_NAMESPACE
    rollout: RolloutSpec = field(default_factory=RolloutSpec)
    approvals: ApprovalSpec = field(default_factory=ApprovalSpec)

    def allows(self, namespace: str) -> bool:
        return namespace in self._allowed_names or self._allowed.match(namespace) is not None

    @property
    def target_pairs(self) -> tuple[tuple[str, str], ...]:
        """Every (cluster, namespace) target in policy order: the order waves walk them in."""
        return tuple(
            (target.cluster, namespace) for target in self.targets for namespace in target.namespaces
        )

    @property
    def target_namespaces(self) -> tuple[str, ...]:
        """The target namespaces of every cluster, each once, in policy order."""
        return tuple(dict.fromkeys(namespace for _, namespace in self.target_pairs))

    @property
    def clusters(self) -> tuple[str, ...]:
        return tuple(target.cluster for target in self.targets)

    @cached_property
    def _allowed_names(self) -> frozenset[str]:
        """The entries of allowedNamespaces without a wildcard: looked up, not matched one after another."""
        return frozenset(pattern for pattern in self.allowed_namespaces if not _GLOB_WILDCARD.search(pattern))

    @cached_property
    def _allowed(self) -> re.Pattern[str]:
        # One expression for all globs: a namespace costs one match, however many globs there are.
        globs = [pattern for pattern in self.allowed_namespaces if pattern not in self._allowed_names]
        return re.compile("|".join(glob_expression(pattern) for pattern in globs) or "(?!)")


# A namespace glob's wildcards: a repository's globs (up to 1,000) are matched against every namespace
# its revision names. fnmatch's expression for "*" then a long run ("*[a-z][a-z]…b") tries that run at
# every place in the name: 1,000 such globs took 9 ms a namespace. One "*" is matched in one pass
# (``glob_expression``), and few classes keep that pass short.
MAX_GLOB_STARS: Final = 2
MAX_MULTI_STAR_GLOBS: Final = 16
MAX_GLOB_CLASSES: Final = 4
MAX_SHOWN_GLOBS: Final = 5
_GLOB_CLASS = re.compile(r"\[[a-z0-9-]+\]")
_GLOB_TOKEN = re.compile(r"\[[a-z0-9-]+\]|[^*]")
_GLOB_WILDCARD = re.compile(r"[*?\[]")


def glob_expression(pattern: str) -> str:
    """The regular expression a namespace (or cluster) glob is matched with (``re.match``): fnmatch's,
    except for a glob of one "*" outside its classes, matched in one pass over the name whatever the
    rest holds: what comes before the "*" at the start, what comes after it at the end, and the name long
    enough for both (fnmatch's ``.*TAIL`` tries the tail at every place in the name)."""
    head, star, tail = pattern.partition("*")
    if not star or not tail or "*" in tail or not _plain_classes(pattern):
        return fnmatch.translate(pattern)
    width = len(_GLOB_TOKEN.findall(head)) + len(_GLOB_TOKEN.findall(tail))
    return f"(?={fnmatch.translate(head + '*')})(?=.{{{width}}})(?s:.*+)(?<={fnmatch.translate(tail)})"


def _plain_classes(pattern: str) -> bool:
    """Whether each ``[`` of ``pattern`` opens a class of namespace characters, closed by ``]``, and no
    ``]`` stands outside one: then a class is one character wide, and a "*" is never inside one."""
    outside = _GLOB_CLASS.sub("", pattern)
    return "[" not in outside and "]" not in outside


def shown_globs(globs: Collection[str]) -> str:
    """The first few globs, comma-separated, and how many more there are: a refusal quotes them for each
    namespace refused, and a list holds up to 1,000 globs of up to 253 characters."""
    listed = ", ".join(itertools.islice(globs, MAX_SHOWN_GLOBS))
    more = len(globs) - MAX_SHOWN_GLOBS
    return listed + (f" and {more:,} more" if more > 0 else "")


@dataclass
class _Reader:
    """Walks a policy document against a declared shape, collecting errors."""

    document: Document
    errors: list[ValidationError] = field(default_factory=list)

    def error(self, path: PathKey, message: str) -> None:
        self.errors.append(self.document.error(path, message))

    def given(self, fields: dict[str, Any], key: str, path: PathKey, requirement: str) -> Any:
        """``fields[key]``, None when the key is left out. A key written with nothing after it (YAML null:
        ``namespaces:`` with every entry commented out) is an error, not the key left out: its default
        (the default cluster's ``default`` namespace, one step to 100%) would silently drop what the
        entries named, and with prune on empty the dropped targets at once."""
        value = fields.get(key)
        if value is None and key in fields:
            self.error((*path, key), f"{requirement}, not null (nothing follows the key)")
        return value

    def mapping(self, value: Any, path: PathKey, known: tuple[str, ...]) -> dict[str, Any]:
        # None: left out (a key written null is refused by ``given``), or a pause's or analysis's body.
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, not {type_name(value)}")
            return {}
        for key in value:
            if key not in known:
                self.error((*path, key), f"unknown field {key!r}{suggestion(key, known)}")
        return value

    def boolean(self, value: Any, path: PathKey, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(path, f"must be true or false, not {type_name(value)}")
            return default
        return value

    def string_list(
        self, value: Any, path: PathKey, check: Callable[[str], str | None]
    ) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            self.error(path, f"must be a list of strings, not {type_name(value)}")
            return None
        if len(value) > MAX_NAMESPACES:
            self.error(path, f"lists {len(value):,} namespaces; at most {MAX_NAMESPACES:,} are allowed")
            return None
        items: dict[str, None] = {}  # a dict: ordered, and "listed twice" costs one lookup
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.error((*path, index), f"must be a string, not {type_name(item)}")
                continue
            problem = check(item)
            if problem:
                self.error((*path, index), problem)
                continue
            if item in items:
                self.error((*path, index), f"{item!r} is listed twice")
                continue
            items[item] = None
        return tuple(items)


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def suggestion(key: str, known: tuple[str, ...]) -> str:
    if len(key) > MAX_SUGGESTION_CHARS:
        return f" (known fields: {', '.join(known)})"
    by_lower = {k.lower(): k for k in known}
    if key.lower() in by_lower:
        return f"; did you mean {by_lower[key.lower()]!r}?"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f" (known fields: {', '.join(known)})"


def namespace_problem(name: str) -> str | None:
    if len(name) > 63 or not NAMESPACE_PATTERN.match(name):
        return f"{name!r} is not a valid namespace name (lowercase letters, digits and '-', at most 63)"
    return None


def namespace_glob_problem(pattern: str) -> str | None:
    """Why a namespace (or cluster) glob is unusable: an administrator's, or a repository's."""
    if len(pattern) > 253 or not NAMESPACE_GLOB_PATTERN.match(pattern):
        return (
            f"{pattern!r} is not a namespace name or glob "
            "(letters, digits, '-', '*', '?', [...]; at most 253 characters)"
        )
    if not _plain_classes(pattern):
        return f"{pattern!r}: each '[' opens a class of letters, digits and '-' closed by ']', like [a-c]"
    return None


def repository_glob_problem(pattern: str) -> str | None:
    """Why a glob of a repository's allowedNamespaces is unusable: whoever pushes writes these, and each is
    matched against every namespace a revision names (an administrator's are not bounded so)."""
    if problem := namespace_glob_problem(pattern):
        return problem
    matched = "as each glob is matched against every namespace a revision names"
    if (stars := pattern.count("*")) > MAX_GLOB_STARS:
        return f"{pattern!r} holds {stars} '*': a glob holds at most {MAX_GLOB_STARS}, {matched}"
    if (classes := pattern.count("[")) > MAX_GLOB_CLASSES:
        return (
            f"{pattern!r} holds {classes} classes [...]: a glob holds at most {MAX_GLOB_CLASSES}, {matched}"
        )
    return None


def _check_multi_star_globs(reader: _Reader, globs: Any) -> None:
    """Globs of two "*" are matched by backtracking (one "*" is matched in one pass): a few are cheap, a
    thousand cost 4 ms a namespace, so a list holds at most MAX_MULTI_STAR_GLOBS of them. Counted in the
    list as written, so that each error names its own entry."""
    if not isinstance(globs, list):
        return
    several = [index for index, glob in enumerate(globs) if isinstance(glob, str) and glob.count("*") == 2]
    for index in several[MAX_MULTI_STAR_GLOBS:]:
        reader.error(
            ("allowedNamespaces", index),
            f"{globs[index]!r}: at most {MAX_MULTI_STAR_GLOBS} globs of the list may hold two '*'",
        )


TOP_LEVEL_FIELDS = ("targets", "allowedNamespaces", "prune", "selfHeal", "flags", "rollout", "approvals")
MAX_PAUSE_SECONDS = 7 * 24 * 3600
# An analysis holds its source's reconcile while it waits: each call and the whole check are bounded.
MAX_ANALYSIS_TIMEOUT_SECONDS = 30
MAX_FAILURE_LIMIT = 10
MAX_ANALYSIS_INTERVAL_SECONDS = 600
MAX_URL_LENGTH = 2000


def parse_duration(value: Any) -> int | None:
    """30 -> 30, "30s" -> 30, "5m" -> 300, "1h30m" -> 5400, "2d" -> 172800; None when not a duration
    (``durations.duration_seconds``: one grammar for the policy file, the command line and the forms)."""
    return duration_seconds(value)


def _read_steps(reader: _Reader, value: Any) -> tuple[Step, ...]:
    path: PathKey = ("rollout", "steps")
    if value is None:  # left out, or null (``given`` reported it)
        return (SetWeight(100),)
    if not isinstance(value, list) or not value:
        reader.error(path, "must be a non-empty list of steps")
        return (SetWeight(100),)
    if len(value) > MAX_STEPS:
        reader.error(path, f"has {len(value):,} steps; a rollout has at most {MAX_STEPS}")
        return (SetWeight(100),)
    steps: list[Step] = []
    last_weight = 0
    for index, raw in enumerate(value):
        here = (*path, index)
        if not isinstance(raw, dict) or len(raw) != 1:
            reader.error(here, "each step is a mapping with exactly one of setWeight, pause, analysis")
            continue
        kind, body = next(iter(raw.items()))
        step: Step | None = None
        if kind == "setWeight":
            step = _read_set_weight(reader, body, (*here, kind), last_weight)
            last_weight = step.weight if step else last_weight
        elif kind == "pause":
            step = _read_pause(reader, body, (*here, kind))
        elif kind == "analysis":
            step = _read_analysis(reader, body, (*here, kind))
        else:
            reader.error(
                (*here, kind), f"unknown step {kind!r}{suggestion(kind, ('setWeight', 'pause', 'analysis'))}"
            )
        if step is not None:
            steps.append(step)
    # Like Argo Rollouts, a rollout that never reaches 100% finishes there.
    if last_weight < 100:
        steps.append(SetWeight(100))
    return tuple(steps)


def _read_set_weight(reader: _Reader, body: Any, path: PathKey, last_weight: int) -> SetWeight | None:
    if isinstance(body, bool) or not isinstance(body, int) or not 0 <= body <= 100:
        reader.error(path, "must be a whole number from 0 to 100")
        return None
    if body < last_weight:
        reader.error(path, f"weights only grow: {body} comes after {last_weight}")
        return None
    return SetWeight(body)


def _read_pause(reader: _Reader, body: Any, path: PathKey) -> Pause | None:
    # ``pause:`` with nothing after it is taken as ``pause: {}``, unlike a null elsewhere: a pause holds
    # nothing but an optional duration, so both say "no duration", and that default waits for a
    # promotion: it drops no step and speeds up nothing.
    fields = reader.mapping(body, path, ("duration",))
    if "duration" not in fields:
        return Pause(None)
    seconds = parse_duration(fields["duration"])
    if seconds is None or seconds > MAX_PAUSE_SECONDS:
        reader.error((*path, "duration"), f"must be a duration like {EXAMPLES} (at most 7 days)")
        return None
    return Pause(seconds)


def _read_analysis(reader: _Reader, body: Any, path: PathKey) -> Analysis | None:
    fields = reader.mapping(body, path, ("http", "failureLimit", "interval"))
    http = reader.mapping(fields.get("http"), (*path, "http"), ("url", "timeoutSeconds"))
    url = http.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > MAX_URL_LENGTH:
        reader.error(
            (*path, "http", "url"),
            f"an http:// or https:// URL is required (at most {MAX_URL_LENGTH} characters)",
        )
        return None
    timeout = http.get("timeoutSeconds", 5)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_ANALYSIS_TIMEOUT_SECONDS
    ):
        reader.error(
            (*path, "http", "timeoutSeconds"),
            f"must be a number of seconds, above 0 and at most {MAX_ANALYSIS_TIMEOUT_SECONDS}",
        )
        return None
    failure_limit = fields.get("failureLimit", 1)
    if (
        isinstance(failure_limit, bool)
        or not isinstance(failure_limit, int)
        or not 1 <= failure_limit <= MAX_FAILURE_LIMIT
    ):
        # Argo Rollouts counts the failures it tolerates (0: abort at the first); Sluice the failures that
        # abort. An Argo user's 0 was refused with no word of the difference.
        argo = (
            ": the failed checks that abort the rollout (Argo Rollouts' failureLimit: 0, abort at the first"
            " failure, is failureLimit: 1 here)"
            if failure_limit == 0 and not isinstance(failure_limit, bool)
            else ""
        )
        reader.error((*path, "failureLimit"), f"must be a whole number from 1 to {MAX_FAILURE_LIMIT}{argo}")
        return None
    interval = parse_duration(fields.get("interval", 10))
    if interval is None or not 1 <= interval <= MAX_ANALYSIS_INTERVAL_SECONDS:
        reader.error((*path, "interval"), "must be a duration like 10s or 1m30s, at most 10m")
        return None
    line = reader.document.line_of(*path, "http", "url")
    step_index = path[2] if isinstance(path[2], int) else None
    return Analysis(url, float(timeout), failure_limit, interval, line=line, step_index=step_index)


def _read_rollout(reader: _Reader, value: Any) -> RolloutSpec:
    fields = reader.mapping(value, ("rollout",), ("steps", "onNewRevision", "consumers", "healthTimeout"))
    on_new = fields.get("onNewRevision", OnNewRevision.SUPERSEDE.value)
    if on_new not in tuple(OnNewRevision):
        reader.error(("rollout", "onNewRevision"), "must be supersede or queue")
        on_new = OnNewRevision.SUPERSEDE
    consumers = fields.get("consumers", ConsumerMode.IGNORE.value)
    if consumers not in tuple(ConsumerMode):
        reader.error(("rollout", "consumers"), "must be ignore, watch or restart")
        consumers = ConsumerMode.IGNORE
    timeout = parse_duration(fields.get("healthTimeout", DEFAULT_HEALTH_TIMEOUT_SECONDS))
    if timeout is None or not 1 <= timeout <= MAX_HEALTH_TIMEOUT_SECONDS:
        reader.error(("rollout", "healthTimeout"), "must be a duration like 90s, 5m or 2m30s, at most 1h")
        timeout = DEFAULT_HEALTH_TIMEOUT_SECONDS
    return RolloutSpec(
        steps=_read_steps(
            reader, reader.given(fields, "steps", ("rollout",), "must be a non-empty list of steps")
        ),
        on_new_revision=OnNewRevision(on_new),
        consumers=ConsumerMode(consumers),
        health_timeout_seconds=timeout,
    )


def _read_approvals(reader: _Reader, value: Any) -> ApprovalSpec:
    fields = reader.mapping(value, ("approvals",), ("required", "forbidSelfApproval"))
    required = fields.get("required", 1)
    if isinstance(required, bool) or not isinstance(required, int) or not 1 <= required <= 10:
        reader.error(("approvals", "required"), "must be a whole number from 1 to 10")
        required = 1
    # Null is refused: taken as left out, it weakened the gate the line was written to set.
    forbid_field = reader.given(fields, "forbidSelfApproval", ("approvals",), "must be true or false")
    forbid = reader.boolean(forbid_field, ("approvals", "forbidSelfApproval"), default=False)
    return ApprovalSpec(required=required, forbid_self_approval=forbid)


def steps_from_json(steps: list[dict[str, Any]]) -> tuple[Step, ...]:
    """Steps as stored on a rollout (``Step.as_json``) back into values."""
    result: list[Step] = []
    for raw in steps:
        if "setWeight" in raw:
            result.append(SetWeight(int(raw["setWeight"])))
        elif "pause" in raw:
            duration = raw["pause"].get("duration")
            result.append(Pause(None if duration is None else int(duration)))
        else:
            body = raw["analysis"]
            result.append(
                Analysis(
                    body["http"]["url"],
                    float(body["http"].get("timeoutSeconds", 5)),
                    int(body.get("failureLimit", 1)),
                    int(body.get("interval", 10)),
                )
            )
    return tuple(result)


def load_policy(
    content: bytes | None,
    file: str = POLICY_FILE,
    *,
    limits: Limits = DEFAULT_LIMITS,
    usage: Usage | None = None,
    default_cluster: str = DEFAULT_CLUSTER,
) -> tuple[Policy, list[ValidationError]]:
    """The policy at a commit; defaults apply when the file is missing.

    ``default_cluster`` is the cluster the mapping form of ``targets`` (and no
    ``targets`` at all) means.
    """
    defaults = _with_defaults(Policy(), default_cluster)
    if content is None:
        return defaults, []
    documents, errors = load_yaml(file, content, limits=limits, usage=usage)
    # A broken policy still gets the defaults, so that the rest of the revision is judged
    # against something sensible rather than against no allowed namespace at all.
    if errors:
        return defaults, errors
    if len(documents) > 1:
        return defaults, [
            ValidationError(file, documents[1].line_of(), "", "must hold a single YAML document")
        ]
    if not documents:
        return defaults, []
    return read_policy(documents[0], default_cluster=default_cluster)


def cluster_name_problem(name: str) -> str | None:
    if len(name) > 63 or not NAMESPACE_PATTERN.match(name):
        return f"{name!r} is not a valid cluster name (lowercase letters, digits and '-', at most 63)"
    return None


def _read_target_namespaces(reader: _Reader, value: Any, path: PathKey) -> tuple[str, ...] | None:
    namespaces = reader.string_list(value, path, namespace_problem)
    if namespaces == ():
        reader.error(path, "must list at least one namespace")
        return None
    return namespaces


def _namespace_places(
    reader: _Reader, value: Any, path: PathKey, namespaces: tuple[str, ...]
) -> tuple[tuple[str, int | None], ...]:
    """Where ``value`` (the list ``namespaces`` was read from) lists each of them: a namespace listed
    twice or after an invalid entry is not at its place in ``namespaces``."""
    first: dict[str, int] = {}
    for index, item in enumerate(value):
        if isinstance(item, str):
            first.setdefault(item, index)
    return tuple(
        (dotted((*path, first[namespace])), reader.document.line_of(*path, first[namespace]))
        for namespace in namespaces
    )


def _read_default_cluster_target(
    reader: _Reader, value: dict[str, Any], default_cluster: str
) -> tuple[Target, ...]:
    """``targets: {namespaces: [...]}``: the default cluster's namespaces."""
    fields = reader.mapping(value, ("targets",), ("namespaces",))
    path: PathKey = ("targets", "namespaces")
    given = reader.given(fields, "namespaces", ("targets",), "must list at least one namespace")
    namespaces = _read_target_namespaces(reader, given, path)
    if not namespaces:
        return ()
    places = _namespace_places(reader, fields["namespaces"], path, namespaces)
    return (Target(default_cluster, namespaces, reader.document.line_of("targets"), "targets", places),)


def _read_targets(reader: _Reader, value: Any, default_cluster: str) -> tuple[Target, ...]:
    """``targets``: a list of {cluster, namespaces}, or the mapping {namespaces} for the default cluster."""
    if value is None:  # left out, or null (``given`` reported it)
        return ()
    if isinstance(value, dict):
        return _read_default_cluster_target(reader, value, default_cluster)
    if not isinstance(value, list) or not value:
        reader.error(("targets",), TARGETS_SHAPE)
        return ()
    if len(value) > MAX_TARGET_CLUSTERS:
        reader.error(
            ("targets",), f"lists {len(value):,} clusters; at most {MAX_TARGET_CLUSTERS} are allowed"
        )
        return ()
    targets: dict[str, Target] = {}
    for index, entry in enumerate(value):
        if target := _read_cluster_target(reader, entry, index, targets):
            targets[target.cluster] = target
    if sum(len(target.namespaces) for target in targets.values()) > MAX_TARGETS:
        reader.error(("targets",), f"names more than {MAX_TARGETS:,} (cluster, namespace) targets in all")
        return ()
    return tuple(targets.values())


def _read_cluster_target(reader: _Reader, entry: Any, index: int, earlier: Collection[str]) -> Target | None:
    """Entry ``index`` of a list of ``targets``; None when it is in error (reported), given the clusters
    of the entries before it."""
    path: PathKey = ("targets", index)
    if entry is None:  # a "-" whose entry is commented out: ``mapping`` takes None as left out
        reader.error(
            path, "must be a mapping with cluster and namespaces, not null (nothing follows the '-')"
        )
        return None
    fields = reader.mapping(entry, path, ("cluster", "namespaces"))
    if not isinstance(entry, dict):
        return None
    cluster = fields.get("cluster")
    if not isinstance(cluster, str):
        reader.error(
            (*path, "cluster"),
            "a cluster name is required"
            if cluster is None
            else f"must be a string, not {type_name(cluster)}",
        )
        return None
    if problem := cluster_name_problem(cluster):
        reader.error((*path, "cluster"), problem)
        return None
    if cluster in earlier:
        reader.error((*path, "cluster"), f"cluster {cluster!r} is listed twice; list its namespaces once")
        return None
    if "namespaces" not in fields:
        reader.error(path, "namespaces are required: the cluster's target namespaces, in order")
        return None
    given = reader.given(fields, "namespaces", path, "must list at least one namespace")
    namespaces = _read_target_namespaces(reader, given, (*path, "namespaces"))
    if not namespaces:
        return None
    line = reader.document.line_of(*path, "cluster")
    places = _namespace_places(reader, fields["namespaces"], (*path, "namespaces"), namespaces)
    return Target(cluster, namespaces, line, f"targets[{index}].cluster", places)


def _read_flags_namespace(reader: _Reader, value: Any) -> str | None:
    flags = reader.mapping(value, ("flags",), ("namespace",))
    # Null is not "left out" here either: the default, the first target namespace, would move the flag
    # sets away from where they are, and with prune on remove them there.
    flags_namespace = reader.given(flags, "namespace", ("flags",), "must be a namespace name")
    if flags_namespace is not None and (
        not isinstance(flags_namespace, str) or namespace_problem(flags_namespace)
    ):
        problem = namespace_problem(flags_namespace) if isinstance(flags_namespace, str) else None
        reader.error(("flags", "namespace"), problem or f"must be a string, not {type_name(flags_namespace)}")
        return None
    return flags_namespace if isinstance(flags_namespace, str) else None


def read_policy(
    document: Document, *, default_cluster: str = DEFAULT_CLUSTER
) -> tuple[Policy, list[ValidationError]]:
    reader = _Reader(document)
    top = reader.mapping(document.data, (), TOP_LEVEL_FIELDS)
    targets = _read_targets(reader, reader.given(top, "targets", (), TARGETS_SHAPE), default_cluster)
    # Null is the default here, as left out: the default only narrows (the targets and the flags
    # namespace), so a list whose entries are all commented out allows no more than it did.
    allowed_field = top.get("allowedNamespaces")
    allowed = reader.string_list(allowed_field, ("allowedNamespaces",), repository_glob_problem)
    _check_multi_star_globs(reader, allowed_field)
    mapping_shape = "must be a mapping"
    flags_namespace = _read_flags_namespace(reader, reader.given(top, "flags", (), mapping_shape))
    policy = _with_defaults(
        Policy(
            targets=targets,
            allowed_namespaces=allowed or (),
            prune=reader.boolean(top.get("prune"), ("prune",), default=False),
            self_heal=reader.boolean(top.get("selfHeal"), ("selfHeal",), default=False),
            flags_namespace=flags_namespace or "",
            rollout=_read_rollout(reader, reader.given(top, "rollout", (), mapping_shape)),
            # Null is the default here (one approval, the administrator's floor on top): it drops no
            # gate the entries set, and each entry's own null is refused below.
            approvals=_read_approvals(reader, top.get("approvals")),
        ),
        default_cluster,
    )
    if allowed is not None:
        _check_allowed(reader, policy, targets, flags_namespace)
    return policy, reader.errors


def _check_allowed(
    reader: _Reader, policy: Policy, targets: tuple[Target, ...], flags_namespace: str | None
) -> None:
    """Target and flags namespaces must lie inside the repository's own allowedNamespaces."""
    for target in targets:
        for namespace, (field_name, line) in zip(target.namespaces, target.namespace_places, strict=True):
            if not policy.allows(namespace):
                message = f"namespace {namespace!r} is not in allowedNamespaces"
                reader.errors.append(ValidationError(reader.document.file, line, field_name, message))
    if flags_namespace and not policy.allows(flags_namespace):
        reader.error(("flags", "namespace"), f"namespace {flags_namespace!r} is not in allowedNamespaces")


def _with_defaults(policy: Policy, default_cluster: str = DEFAULT_CLUSTER) -> Policy:
    targets = policy.targets or (Target(default_cluster, (DEFAULT_NAMESPACE,)),)
    first_namespace = targets[0].namespaces[0]
    flags_namespace = policy.flags_namespace or first_namespace
    target_namespaces = tuple(dict.fromkeys(ns for target in targets for ns in target.namespaces))
    # Without an explicit list, a repository may write only where it targets.
    allowed = policy.allowed_namespaces or tuple(dict.fromkeys((*target_namespaces, flags_namespace)))
    return Policy(
        targets=targets,
        allowed_namespaces=allowed,
        prune=policy.prune,
        self_heal=policy.self_heal,
        flags_namespace=flags_namespace,
        rollout=policy.rollout,
        approvals=policy.approvals,
    )
