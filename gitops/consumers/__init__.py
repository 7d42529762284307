"""The workloads that read a ConfigMap: which ones, their restart stamp, and whether their rollout is done."""
