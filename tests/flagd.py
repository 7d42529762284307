"""The real flagd evaluator (openfeature-provider-flagd, in-process, file-based) for tests."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.provider import ProviderStatus

KEYS = tuple(f"user-{i}" for i in range(10_000))


class Evaluator:
    """Serves one flag-set document, exactly as published, to an OpenFeature client."""

    def __init__(self, document_text: str, directory: Path) -> None:
        name = uuid.uuid4().hex
        path = directory / f"{name}.flagd.json"
        path.write_text(document_text, encoding="utf-8")
        self.provider = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(path))
        api.set_provider(self.provider, name)
        self.client = api.get_client(name)
        # The file loads on a thread; before READY every evaluation returns the code default.
        deadline = time.monotonic() + 10
        while self.client.get_provider_status() is not ProviderStatus.READY:
            assert time.monotonic() < deadline, "the flagd provider did not become READY"
            time.sleep(0.01)

    def values(self, flag: str, default: Any, keys: tuple[str, ...] = KEYS) -> dict[str, Any]:
        read = {bool: self.client.get_boolean_details, str: self.client.get_string_details}[type(default)]
        return {key: read(flag, default, EvaluationContext(targeting_key=key)).value for key in keys}

    def details(self, flag: str, default: Any, key: str = "user-0"):
        read = {bool: self.client.get_boolean_details, str: self.client.get_string_details}[type(default)]
        return read(flag, default, EvaluationContext(targeting_key=key))

    def close(self) -> None:
        self.provider.shutdown()


def evaluate(document: dict | str, flag: str, default: Any, directory: Path) -> dict[str, Any]:
    evaluator = Evaluator(document if isinstance(document, str) else json.dumps(document), directory)
    try:
        return evaluator.values(flag, default)
    finally:
        evaluator.close()
