"""Persistent state of the reconciler. Models arrive with the reconcile core."""
