"""The liveness probes deploy/kubernetes gives a Deployment, run here as the kubelet runs them."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def liveness_command(manifest: str) -> list[str]:
    """The exec probe's command of the Deployment in ``deploy/kubernetes/<manifest>``."""
    (deployment,) = [
        document
        for document in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / manifest).read_text())
        if document and document["kind"] == "Deployment"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return list(container["livenessProbe"]["exec"]["command"])


def probe_passes(manifest: str, data_dir: Path) -> bool:
    """Whether the probe passes in a container whose SLUICE_DATA_DIR is ``data_dir``."""
    env = {**os.environ, "SLUICE_DATA_DIR": str(data_dir)}
    probed = subprocess.run(liveness_command(manifest), env=env, capture_output=True, timeout=30, check=False)
    return probed.returncode == 0


def deadline_in(path: Path) -> float:
    """How many seconds from now the heartbeat's written deadline lies."""
    return float(path.read_text()) - time.time()


def expire(path: Path) -> None:
    """Writes a heartbeat whose time has passed: a loop that stopped turning before its next round."""
    path.write_text(f"{time.time() - 1:.3f}\n")
