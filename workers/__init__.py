"""The executing side: the Celery app, the task that wraps one Data Pipeline task, handlers per type.

Run with ``celery -A workers worker -Q dp.<worker-group>``.
"""

from workers.app import app

__all__ = ["app"]
