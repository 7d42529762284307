"""Rollouts: what is published at each step while a change goes out. Pure: no Django, no I/O."""
