"""Project wiring: settings, URLs and the WSGI/ASGI entry points.

This package may import both apps; ``gitops`` and ``dashboard`` never import it.
"""
