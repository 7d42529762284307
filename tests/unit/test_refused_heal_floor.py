"""A self-heal whose apply went through and whose removal of foreign keys was refused still tells the
live cache the version its apply stored, so stamps older than that write are held back."""

from __future__ import annotations

from typing import Any

from gitops.cluster import apply, livestore
from gitops.errors import PermanentError
from gitops.models import ApplyIntent
from gitops.vocabulary import ChangeAction


class RefusesTheRemoval:
    """A cluster whose apply stores version 123, keeping a key someone added, and which refuses the
    merge patch that takes that key out (an admission webhook, a 422)."""

    name = "local"

    def apply_configmap(self, manifest: Any, **options: Any) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": "123"}, "data": {"app": "1", "added-by-hand": "x"}}

    def remove_configmap_keys(self, namespace: str, name: str, **keys: Any) -> None:
        raise PermanentError("admission webhook refused the patch")


def heal() -> ApplyIntent:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": "team"}}
    return ApplyIntent(
        cluster="local",
        namespace="team",
        name="app",
        action=ChangeAction.SELF_HEAL,
        manifest={**manifest, "data": {"app": "1"}},
        after={"data": {"app": "1"}},
        before={"data": {"app": "0", "added-by-hand": "x"}},
        force=True,
    )


def test_a_refused_removal_after_a_heal_keeps_the_version_the_apply_stored(monkeypatch):
    intent = heal()

    answer = apply._apply_one(RefusesTheRemoval(), intent, lambda: None)  # type: ignore[arg-type]

    assert answer.refusal is not None and "refused the patch" in answer.refusal
    assert (answer.resource_version, answer.wrote) == ("123", True)

    told: list[dict[str, list[livestore.Written]]] = []
    monkeypatch.setattr(livestore, "unsettle_written", lambda cluster, written: told.append(written) or 0)
    assert apply._unsettle_written("local", [intent], [answer]) == {}
    dropped_and_floored = livestore.Written("app", "", "123")
    assert told == [{"team": [dropped_and_floored]}], "the stamp goes; the floor is the write's version"
