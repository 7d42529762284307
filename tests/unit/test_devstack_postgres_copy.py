"""As root, the dev stack runs PostgreSQL's tools from a copy of pgserver's binaries. The copy lived at a
name anyone could compute in /var/tmp: a local user could plant binaries there that root then ran, or
make its staging name a symlink into /etc. It now lives in a directory only root owns and may write."""

from __future__ import annotations

import os

import pytest

from devstack.stack import StackError, _root_only_directory


def test_a_directory_others_may_write_or_a_symlink_is_refused(tmp_path) -> None:
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    with pytest.raises(StackError, match="only root owns and may write"):
        _root_only_directory(open_to_all)

    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(StackError, match="only root owns and may write"):
        _root_only_directory(link)


def test_a_missing_directory_is_made_root_only_when_root_runs_it(tmp_path) -> None:
    made = tmp_path / "made"
    if os.geteuid() == 0:
        assert _root_only_directory(made) == made
        assert made.stat().st_mode & 0o777 == 0o755
    else:  # anyone else's is refused: only root's copy is run as root
        with pytest.raises(StackError):
            _root_only_directory(made)
