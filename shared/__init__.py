"""What the CLI and the workers agree on: settings, records, the Celery app, job schemas.

Nothing in this package imports torch: the client install must stay light.
"""
