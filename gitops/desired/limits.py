"""How much of a repository Sluice will read: the bounds that keep a hostile push from exhausting a worker.

Whoever can push to a watched repository controls every byte the loader reads. Each bound here turns
"too much" into a ``ValidationError`` that names the file, before the work or the memory it would cost
is spent. The defaults fit real repositories with room to spare (the reconcile benchmark's 10,000
one-ConfigMap files use a fifth of them); an administrator can move each one with the setting named
in ``SETTINGS``. README.md, section "Limits", is the user-facing table.

Pure: ``Limits.from_settings`` reads attributes of whatever object it is given (Django's settings in
the shell), so nothing here imports Django.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final

MiB: Final = 1024 * 1024
# Directories, symlinks and submodules a tree's listing steps over where Sluice reads files before it
# gives up (the worker's mirror and the offline validator alike); none is kept, so this bounds time: a
# tree of empty trees holds billions of directories in a few pages of objects.
MAX_SKIPPED_ENTRIES: Final = 100_000
# A listing's record is its metadata and a path; git allows a path of any length, Sluice's names are at
# most 1,000 characters (MAX_PATH_LENGTH). Past this a record is refused before more of it is buffered.
MAX_RECORD_BYTES: Final = 256 * 1024


@dataclass(frozen=True)
class Limits:
    # Per file, known from the Git tree before the blob is read: an oversized blob is never loaded.
    max_file_bytes: int = 2 * MiB
    # Files Sluice reads (sluice.yaml, configmaps/**/*.yaml|yml, flags/**/*.json|yaml|yml) per revision.
    max_files: int = 20_000
    # Their sizes added up, also known before anything is read.
    max_revision_bytes: int = 64 * MiB
    # Values one file may build: every scalar, list and mapping, each use of an alias counting its
    # whole anchored value again. This is what bounds a "billion laughs" alias bomb.
    max_file_nodes: int = 100_000
    # The same, added up over the revision: what a revision may keep in a worker's memory.
    max_revision_nodes: int = 500_000
    # Alias uses (*name) per file.
    max_aliases: int = 1_000
    # Lists and mappings nested in each other (flow, block and JSON alike).
    max_depth: int = 64
    # ConfigMaps after expansion to their target namespaces (flag sets included).
    max_objects: int = 100_000
    # Their content added up, each target counted (keys and values, UTF-8): what a revision makes a
    # worker hold in intents and request bodies. A 1 MiB file for 1,000 namespaces is 1 GiB of it.
    max_expanded_bytes: int = 128 * MiB

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{SETTINGS[item.name]} must be a whole number of at least 1, not {value!r}")

    @classmethod
    def from_settings(cls, settings: object) -> Limits:
        """The limits an administrator set (``SLUICE_MAX_...`` attributes), defaults for the rest."""
        chosen = {
            name: getattr(settings, setting)
            for name, setting in SETTINGS.items()
            if hasattr(settings, setting)
        }
        return cls(**chosen)


# Each limit's setting (and environment variable) name.
SETTINGS: Final = {
    "max_file_bytes": "SLUICE_MAX_FILE_BYTES",
    "max_files": "SLUICE_MAX_FILES",
    "max_revision_bytes": "SLUICE_MAX_REVISION_BYTES",
    "max_file_nodes": "SLUICE_MAX_FILE_NODES",
    "max_revision_nodes": "SLUICE_MAX_REVISION_NODES",
    "max_aliases": "SLUICE_MAX_ALIASES",
    "max_depth": "SLUICE_MAX_DEPTH",
    "max_objects": "SLUICE_MAX_OBJECTS",
    "max_expanded_bytes": "SLUICE_MAX_EXPANDED_BYTES",
}

DEFAULT_LIMITS: Final = Limits()


def setting_hint(name: str) -> str:
    """`` (SLUICE_MAX_...)``: tells the reader which setting moves the limit they hit."""
    return f" (setting {SETTINGS[name]})"
