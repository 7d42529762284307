"""gitops.cluster.lazy_kubernetes: the ``kubernetes`` package loads its names on first use, and every
name it exports still resolves to what the eager import gives.

Each check runs in a fresh interpreter, so that what it imports is all it loaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from gitops.cluster.lazy_kubernetes import LAZY_PACKAGES, exported_names, reads_every_import

ROOT = Path(__file__).resolve().parents[2]

# Every public name of each package as the eager import leaves it: "module:qualname" or "module".
_DESCRIBE = """
import json, sys, types
def describe(value):
    if isinstance(value, types.ModuleType):
        return value.__name__
    return f"{value.__module__}:{value.__qualname__}" if hasattr(value, "__qualname__") else repr(value)
packages = {name: sys.modules[name] for name in %(packages)r if name in sys.modules}
print(json.dumps({
    "names": {name: {attribute: describe(getattr(package, attribute))
                     for attribute in (%(attributes)s)}
              for name, package in packages.items()},
    "models_loaded": sum(1 for name in sys.modules if name.startswith("kubernetes.client.models.")),
    "apis_loaded": sum(1 for name in sys.modules if name.startswith("kubernetes.client.api.")),
}))
"""


def _run(prelude: str, attributes: str) -> dict:
    script = prelude + _DESCRIBE % {"packages": sorted(LAZY_PACKAGES), "attributes": attributes}
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "sluice.settings", "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def test_the_cluster_package_loads_no_model_or_api_it_does_not_use() -> None:
    lazy = _run(
        "import django; django.setup()\nimport gitops.cluster\n",
        "[]",
    )
    assert lazy["models_loaded"] < 10, lazy
    assert lazy["apis_loaded"] < 5, lazy


def test_every_name_the_eager_import_exports_resolves_to_the_same_object_when_lazy() -> None:
    eager_names = "[attribute for attribute in dir(package) if not attribute.startswith('_')]"
    eager = _run(
        "import kubernetes, kubernetes.client, kubernetes.client.api, kubernetes.client.models\n",
        eager_names,
    )
    names = {package: sorted(described) for package, described in eager["names"].items()}
    lazy = _run(
        "import django; django.setup()\nimport gitops.cluster\n"
        "import kubernetes, kubernetes.client, kubernetes.client.api, kubernetes.client.models\n",
        f"{json.dumps(names)}[name]",
    )
    assert eager["models_loaded"] > 700  # the eager import did load everything: the check compares something
    for package, described in eager["names"].items():
        assert lazy["names"][package] == described, package
    assert eager["names"]["kubernetes.client"]["V1ConfigMap"] == (
        "kubernetes.client.models.v1_config_map:V1ConfigMap"
    )


def test_a_star_import_gets_every_name_as_from_the_eager_import() -> None:
    lazy = _run(
        "import django; django.setup()\nimport gitops.cluster\nimport kubernetes.client.apis\n",
        "['CoreV1Api'] if package.__name__ == 'kubernetes.client.api' else []",
    )
    assert lazy["names"]["kubernetes.client.api"] == {
        "CoreV1Api": "kubernetes.client.api.core_v1_api:CoreV1Api"
    }
    from_star = _run(
        "import django; django.setup()\nimport gitops.cluster\nfrom kubernetes.client.api import *\n"
        "import kubernetes.client.apis as apis\nassert apis.CoreV1Api.__name__ == 'CoreV1Api'\n",
        "[]",
    )
    assert from_star["apis_loaded"] > 60


def test_exported_names_reads_relative_and_absolute_imports() -> None:
    source = (
        "from __future__ import absolute_import\n"
        "__version__ = '1'\n"
        "from . import client\n"
        "from .api_client import ApiClient\n"
        "from kubernetes.client.models.v1_pod import V1Pod\n"
        "from .. import config\n"
    )
    assert exported_names("kubernetes.client", source) == {
        "absolute_import": ("__future__", "absolute_import"),
        "client": ("kubernetes.client.client", None),
        "ApiClient": ("kubernetes.client.api_client", "ApiClient"),
        "V1Pod": ("kubernetes.client.models.v1_pod", "V1Pod"),
        "config": ("kubernetes", "config"),
    }


def test_an_init_with_an_import_the_reader_would_miss_is_left_to_the_usual_import() -> None:
    one_name_each = (
        '"""The client."""\n\n__version__ = "36.0.3"\n# a comment\n'
        "from .api_client import ApiClient\nfrom kubernetes.client.models.v1_pod import V1Pod\n"
    )
    assert reads_every_import(one_name_each)
    for missed in (
        "from .rest import (ApiException,\n    RESTResponse)\n",
        "from .rest import ApiException, RESTResponse\n",
        "from .rest import ApiException as Refused\n",
        "from.rest import ApiException\n",
        "import kubernetes.watch\n",
        "if True:\n    from .rest import ApiException\n",
        "x = 1; from .rest import ApiException\n",
        "Refused = ApiClient\n",
        "def __getattr__(name):\n    return name\n",
        '__version__ = (\n    "36.0.3"\n)\n',
        "from .rest import ApiException  # trailing\n",
        "from .rest import\n",
    ):
        assert not reads_every_import(one_name_each + missed), missed


def test_the_installed_client_is_read_whole_so_it_is_imported_lazily() -> None:
    for package in LAZY_PACKAGES:
        init = Path(importlib.util.find_spec(package).origin)  # the finder may be installed: ask the path
        assert reads_every_import(init.read_text("utf-8")), package
