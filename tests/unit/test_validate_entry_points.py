"""The ways to run the offline validator: ``python -m gitops.validate``, the ``sluice-validate`` script
that ``pip install .`` (and so pre-commit) installs, and ``manage.py gitops validate``.

Each runs in a fresh process with only the environment it names: no DATABASE_URL, no SECRET_KEY and
no DJANGO_SETTINGS_MODULE unless the case is manage.py, as a pre-commit hook or a CI job has.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.unit.test_validate import APP, GOOD, SUMMARY, write_tree

ROOT = Path(__file__).resolve().parents[2]
BARE = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
SCOPE = "administrator scope not checked"


def python(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )


def test_python_m_gitops_validate_needs_no_settings_database_or_django(tmp_path: Path):
    source = write_tree(tmp_path, GOOD)
    env = {**BARE, "PYTHONPATH": str(ROOT)}

    valid = python("-X", "importtime", "-m", "gitops.validate", env=env, cwd=source)

    assert valid.returncode == 0, valid.stderr[-2000:]
    assert valid.stdout == f"{SUMMARY} (working tree of .; {SCOPE})\n"
    imported = re.findall(r"\|\s+([\w.]+)\n", valid.stderr)
    assert "gitops.desired.revision" in imported
    assert [
        name for name in imported if name.split(".")[0] in ("django", "celery", "kubernetes", "redis")
    ] == []

    write_tree(source, {"configmaps/app.yaml": APP + b"  PORT: 8080\n"})
    invalid = python("-m", "gitops.validate", str(source), env=env, cwd=tmp_path.parent)
    assert invalid.returncode == 1
    assert (
        invalid.stdout
        == 'configmaps/app.yaml:7: data.PORT: value must be a string, not a number; quote it: "8080"\n'
    )
    assert invalid.stderr == f"invalid: 1 error (working tree of {source}; {SCOPE})\n"


def test_the_limits_come_from_the_environment_as_on_a_server(tmp_path: Path):
    source = write_tree(tmp_path, GOOD)
    env = {**BARE, "PYTHONPATH": str(ROOT), "SLUICE_MAX_FILE_BYTES": "100"}

    refused = python("-m", "gitops.validate", env=env, cwd=source)
    assert refused.returncode == 1
    assert "flags/checkout.json: the file is 115 bytes; files are read up to 100 bytes" in refused.stdout

    broken = python("-m", "gitops.validate", env={**env, "SLUICE_MAX_FILE_BYTES": "lots"}, cwd=source)
    assert (broken.returncode, broken.stdout) == (2, "")
    assert broken.stderr == "cannot validate: SLUICE_MAX_FILE_BYTES must be a whole number, not 'lots'\n"


def test_manage_py_gitops_validate_runs_the_same_check_with_the_settings_limits(tmp_path: Path):
    source = write_tree(tmp_path / "source", GOOD)
    # Production settings, and a database that is not there: validating never connects to one.
    env = {
        **BARE,
        "DJANGO_SETTINGS_MODULE": "sluice.settings",
        "SECRET_KEY": "x" * 50,
        "DATABASE_URL": "postgres://nobody@127.0.0.1:9/none",
    }

    valid = python("manage.py", "gitops", "validate", str(source), env=env, cwd=ROOT)
    assert valid.returncode == 0, valid.stderr[-2000:]
    assert valid.stdout == f"{SUMMARY} (working tree of {source}; {SCOPE})\n"

    small = python(
        "manage.py", "gitops", "validate", str(source), env={**env, "SLUICE_MAX_FILE_BYTES": "100"}, cwd=ROOT
    )
    assert small.returncode == 1
    assert small.stdout.splitlines() == [
        "flags/checkout.json: the file is 115 bytes; files are read up to 100 bytes "
        "(setting SLUICE_MAX_FILE_BYTES)"
    ]
    assert small.stderr == f"invalid: 1 error (working tree of {source}; {SCOPE})\n"

    unreadable = python("manage.py", "gitops", "validate", str(tmp_path / "nowhere"), env=env, cwd=ROOT)
    assert unreadable.returncode == 2
    assert unreadable.stderr == f"cannot validate: {tmp_path / 'nowhere'} is not a directory\n"


def clone_of_this_repository(destination: Path) -> Path:
    """The files a clone would hold (what pre-commit builds from): tracked ones and new, unignored ones."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    )
    for name in listed.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def test_pip_install_gives_the_pre_commit_hook_a_script_that_runs_with_pyyaml_alone(tmp_path: Path):
    """What pre-commit does with .pre-commit-hooks.yaml: build this repository with its declared
    backend, install it, and run the hook's entry; here offline, with nothing but PyYAML beside it."""
    project = clone_of_this_repository(tmp_path / "project")
    wheels, target = tmp_path / "wheels", tmp_path / "installed"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(project)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = wheels.glob("sluice-0.1.0-*.whl")
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert {path.name for path in target.iterdir()} == {"bin", "gitops", "sluice-0.1.0.dist-info"}
    entry_points = (target / "sluice-0.1.0.dist-info/entry_points.txt").read_text()
    assert "sluice-validate = gitops.validate:main" in entry_points
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["language"] == "python"
    assert hook["pass_filenames"] is False
    command = hook["entry"].split()
    assert command[0] == "sluice-validate"

    # Only PyYAML beside the installed package; -S leaves out this virtualenv's Django and Celery.
    only_yaml = tmp_path / "only-yaml"
    shutil.copytree(Path(yaml.__file__).parent, only_yaml / "yaml")
    source = write_tree(tmp_path / "source", GOOD)
    subprocess.run(["git", "init", "--quiet", str(source)], check=True)
    subprocess.run(["git", "-C", str(source), "add", "--all"], check=True)
    env = {**BARE, "PYTHONPATH": f"{target}:{only_yaml}"}
    hook_run = python("-S", str(target / "bin" / command[0]), *command[1:], env=env, cwd=source)

    assert hook_run.returncode == 0, hook_run.stderr[-2000:]
    assert hook_run.stdout == f"{SUMMARY} (staged files of .; {SCOPE})\n"
