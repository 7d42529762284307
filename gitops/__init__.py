"""Sluice's reconciler: domain logic, Celery tasks and the CLI.

``celery -A gitops worker`` finds the Celery app through this package. It is loaded on first
use rather than with the package, so that the offline validator (``python -m gitops.validate``)
runs where neither Celery nor Django is installed, as in a pre-commit hook's environment.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gitops.celery import app as app
    from gitops.celery import app as celery_app

__all__ = ["app", "celery_app"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery_app"):
        from gitops.celery import app  # noqa: PLC0415 - deferred on purpose, see the module docstring

        return app
    raise AttributeError(f"module 'gitops' has no attribute {name!r}")
