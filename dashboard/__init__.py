"""Sluice's web dashboard. It calls gitops services; gitops never imports it."""
