"""Intake: push webhooks from Git hosts, their secrets, and the requests they turn into."""
