"""Two real flagd evaluators for tests, with one interface.

- ``python``: openfeature-provider-flagd, in-process and file-based, on openfeature-flagd-core
  (2.x). ``fractional`` buckets on the CBOR encoding of its bucketing value (by default
  ``[flagKey, targetingKey]``; a Sluice canary's, the string ``sluice-canary/<seed>/<targetingKey>``).
- ``js``: @openfeature/flagd-core (4.0.1, pinned in tests/js/package-lock.json), run by
  ``node tests/js/evaluate.mjs``. ``fractional`` hashes the bucketing value
  as a string (by default ``flagKey + targetingKey``).

For the same published flag set they put different users on each side of a split, so a
flag canary is correct only if each of them, on its own, sees the intended share and keeps
whoever had the new result at every higher weight. The flag-canary tests run with both.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

KEYS = tuple(f"user-{i}" for i in range(10_000))
JS_DIR = Path(__file__).parent / "js"
PYTHON_CORE = "openfeature-flagd-core"
JS_CORE = "@openfeature/flagd-core"
JS_CORE_VERSION = "4.0.1"


@dataclass(frozen=True)
class Context:
    """An evaluation context: the targeting key (None: the caller has none) and attributes."""

    targeting_key: str | None
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolution:
    """What an evaluator resolved for one context: error codes and reasons as OpenFeature spells them."""

    value: Any
    variant: str | None
    reason: str | None
    error_code: str | None
    flag_metadata: Mapping[str, Any] = field(default_factory=dict)


# (flag, kind, code default); kind is one of KINDS.
Evaluation = tuple[str, str, Any]
KINDS = ("boolean", "string", "number", "object")
KEY_CONTEXTS = {key: Context(key) for key in KEYS}


def kind_of(default: Any) -> str:
    """The OpenFeature type a flag is read as, from the code default the caller passes."""
    if isinstance(default, bool):
        return "boolean"
    if isinstance(default, str):
        return "string"
    if isinstance(default, int | float):
        return "number"
    return "object"


class FlagdEvaluator(ABC):
    """Serves one flag-set document, exactly as published, to an evaluator."""

    name: ClassVar[str]

    @staticmethod
    @abstractmethod
    def version() -> str:
        """The evaluator and its version, as the README's list of checked evaluators names it."""

    def __init__(self, document_text: str, directory: Path) -> None:
        self.path = directory / f"{uuid.uuid4().hex}.flagd.json"
        self.path.write_text(document_text, encoding="utf-8")

    @abstractmethod
    def resolve_flags(
        self, evaluations: Sequence[Evaluation], contexts: Mapping[str, Context], *, metadata: bool = False
    ) -> dict[str, dict[str, Resolution]]:
        """resolved[flag][context name] for each evaluation, over every context; flag metadata if asked."""

    def resolve(
        self, flag: str, kind: str, default: Any, contexts: Mapping[str, Context], *, metadata: bool = False
    ) -> dict[str, Resolution]:
        return self.resolve_flags([(flag, kind, default)], contexts, metadata=metadata)[flag]

    def values(self, flag: str, default: Any, keys: Sequence[str] = KEYS) -> dict[str, Any]:
        return self.values_of({flag: default}, keys)[flag]

    def values_of(self, defaults: Mapping[str, Any], keys: Sequence[str] = KEYS) -> dict[str, dict[str, Any]]:
        """values_of({flag: code default})[flag][key], every flag in one pass of the evaluator."""
        contexts = {key: KEY_CONTEXTS.get(key) or Context(key) for key in keys}
        evaluations = [(flag, kind_of(default), default) for flag, default in defaults.items()]
        resolved = self.resolve_flags(evaluations, contexts)
        return {flag: {key: r.value for key, r in by_key.items()} for flag, by_key in resolved.items()}

    def details(self, flag: str, default: Any, key: str = "user-0") -> Resolution:
        return self.resolve(flag, kind_of(default), default, {key: Context(key)}, metadata=True)[key]

    @abstractmethod
    def close(self) -> None:
        """Releases what serving took; the file stays (the Python provider's watcher may still read it)."""


class PythonEvaluator(FlagdEvaluator):
    """openfeature-provider-flagd's in-process resolver reading the file (openfeature-flagd-core 2.x).

    Evaluations call the provider's resolve methods, which is where flagd's evaluation happens;
    the OpenFeature client around them adds hooks, context merging and bookkeeping that cost
    about 60% of each evaluation and, for a file-based flagd provider, change no result (its only
    hook merges an empty context). The client's one contribution to a result, turning a provider's
    error into the code default with reason ERROR, is done here the same way; the test
    ``test_the_provider_resolves_what_the_openfeature_client_resolves`` holds the two paths equal.
    ``through_client=True`` reads through the client instead.
    """

    name = "python"

    @staticmethod
    def version() -> str:
        from importlib.metadata import version

        return f"{PYTHON_CORE} {version(PYTHON_CORE)}"

    def __init__(self, document_text: str, directory: Path, *, through_client: bool = False) -> None:
        from openfeature import api
        from openfeature.contrib.provider.flagd import FlagdProvider
        from openfeature.contrib.provider.flagd.config import ResolverType
        from openfeature.provider import ProviderStatus

        super().__init__(document_text, directory)
        self.through_client = through_client
        self.provider = FlagdProvider(
            resolver_type=ResolverType.FILE, offline_flag_source_path=str(self.path)
        )
        api.set_provider(self.provider, self.path.stem)
        self.client = api.get_client(self.path.stem)
        # The file loads on a thread; before READY every evaluation returns the code default.
        deadline = time.monotonic() + 10
        while (status := self.client.get_provider_status()) is not ProviderStatus.READY:
            assert time.monotonic() < deadline, f"the flagd provider is {status.value} after 10 s"
            time.sleep(0.01)

    def _reader(self, kind: str) -> Callable[..., Any]:
        client, provider = self.client, self.provider
        if self.through_client:
            return {
                "boolean": client.get_boolean_details,
                "string": client.get_string_details,
                "number": client.get_float_details,
                "object": client.get_object_details,
            }[kind]
        return {
            "boolean": provider.resolve_boolean_details,
            "string": provider.resolve_string_details,
            "number": provider.resolve_float_details,
            "object": provider.resolve_object_details,
        }[kind]

    def resolve_flags(
        self, evaluations: Sequence[Evaluation], contexts: Mapping[str, Context], *, metadata: bool = False
    ) -> dict[str, dict[str, Resolution]]:
        from openfeature.evaluation_context import EvaluationContext

        converted = {
            name: EvaluationContext(targeting_key=context.targeting_key, attributes=dict(context.attributes))
            for name, context in contexts.items()
        }
        resolved: dict[str, dict[str, Resolution]] = {}
        for flag, kind, default in evaluations:
            read = self._reader(kind)
            resolved[flag] = {
                name: _resolution(read, flag, default, context, metadata=metadata)
                for name, context in converted.items()
            }
        return resolved

    def close(self) -> None:
        self.provider.shutdown()


def _resolution(
    read: Callable[..., Any], flag: str, default: Any, context: Any, *, metadata: bool
) -> Resolution:
    """One evaluation; a provider's error becomes what the OpenFeature client answers for it."""
    from openfeature.exception import OpenFeatureError

    try:
        details = read(flag, default, context)
    except OpenFeatureError as error:
        return Resolution(value=default, variant=None, reason="ERROR", error_code=error.error_code.value)
    return Resolution(
        value=details.value,
        variant=details.variant,
        reason=getattr(details.reason, "value", details.reason),
        error_code=details.error_code.value if details.error_code else None,
        flag_metadata=dict(details.flag_metadata) if metadata else {},
    )


class JsEvaluator(FlagdEvaluator):
    """@openfeature/flagd-core, the evaluator of flagd's JavaScript providers, through Node."""

    name = "js"

    @staticmethod
    def version() -> str:
        installed = JS_DIR / "node_modules" / "@openfeature" / "flagd-core" / "package.json"
        return f"{JS_CORE} {json.loads(installed.read_text())['version']}"

    def __init__(self, document_text: str, directory: Path) -> None:
        super().__init__(document_text, directory)
        node = shutil.which("node")
        assert node, "Node.js is needed for the JavaScript flagd evaluator (make setup runs npm ci)"
        assert (JS_DIR / "node_modules" / "@openfeature" / "flagd-core").is_dir(), (
            "tests/js/node_modules is missing: run `make setup` (it runs npm ci in tests/js)"
        )
        self.node = node

    def resolve_flags(
        self, evaluations: Sequence[Evaluation], contexts: Mapping[str, Context], *, metadata: bool = False
    ) -> dict[str, dict[str, Resolution]]:
        request = {
            "contexts": {
                name: {
                    **context.attributes,
                    **({"targetingKey": context.targeting_key} if context.targeting_key is not None else {}),
                }
                for name, context in contexts.items()
            },
            "evaluations": [{"flag": f, "type": kind, "default": d} for f, kind, d in evaluations],
            "metadata": metadata,
        }
        done = subprocess.run(
            [self.node, str(JS_DIR / "evaluate.mjs"), str(self.path)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"evaluate.mjs failed ({done.returncode}): {done.stderr[-2000:]}"
        answer = json.loads(done.stdout)
        assert answer["evaluator"] == f"{JS_CORE} {JS_CORE_VERSION}", answer["evaluator"]
        return {
            flag: {
                name: Resolution(
                    value=r["value"],
                    variant=r["variant"],
                    reason=r["reason"],
                    error_code=r["errorCode"],
                    flag_metadata=r.get("flagMetadata", {}),
                )
                for name, r in by_context.items()
            }
            for flag, by_context in answer["results"].items()
        }

    def close(self) -> None:
        """Each resolve runs its own Node process: nothing stays open."""


EVALUATORS: dict[str, type[FlagdEvaluator]] = {"python": PythonEvaluator, "js": JsEvaluator}


def evaluate_all(
    document: dict[str, Any] | str, defaults: Mapping[str, Any], directory: Path, evaluator: str = "python"
) -> dict[str, dict[str, Any]]:
    """evaluate_all(document, {flag: code default})[flag][key] for the 10,000 keys, in one pass."""
    text = document if isinstance(document, str) else json.dumps(document)
    served = EVALUATORS[evaluator](text, directory)
    try:
        return served.values_of(defaults)
    finally:
        served.close()
