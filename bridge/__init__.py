"""The claiming side of the Celery bridge for AWS Data Pipeline: CLI, settings, client, poller."""
