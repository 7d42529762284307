import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sluice.settings")
application = get_wsgi_application()

# The URLconf, and with it every view module, loads here as a worker starts rather than in the first
# request it takes: otherwise each new worker spends its first webhook importing most of Sluice.
get_resolver().url_patterns  # noqa: B018 - the access is the point: it imports them
