"""Sluice's reconciler: domain logic, Celery tasks and the CLI.

``celery -A gitops worker`` finds the Celery app through this package.
"""

from gitops.celery import app

celery_app = app

__all__ = ["app", "celery_app"]
