"""Static files on every documented path: collected in the image, straight from the apps in a checkout.

The image runs ``collectstatic``: WhiteNoise's manifest storage writes hashed, compressed copies to
STATIC_ROOT with a manifest, pages link the hashed names, and WhiteNoise serves them with far-future
caching. A checkout run with ``manage.py runserver`` or gunicorn has collected nothing; there the
manifest storage could name no file (every page would fail with DEBUG off), so pages link the plain
names, which WhiteNoise serves from the apps' static directories (``WHITENOISE_USE_FINDERS``, set in
settings.py when STATIC_ROOT holds no manifest).
"""

from __future__ import annotations

from typing import Any

from whitenoise.storage import CompressedManifestStaticFilesStorage


class CollectedOrAppStaticFiles(CompressedManifestStaticFilesStorage):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Decided once per process, as WhiteNoise decides once at start-up what it serves.
        self.collected = self.manifest_storage.exists(self.manifest_name)

    def stored_name(self, name: str) -> str:
        if not self.collected:
            return name
        return str(super().stored_name(name))
