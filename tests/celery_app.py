"""The Celery app of the broker tests: one task that records its call in a file.

``BGTASKS_BROKER_URL`` names the Redis broker; ``BGTASKS_TEST_DIR`` the directory of side
effects. Delivery is at least once: late acks, rejected when the worker is lost, and a short
Redis visibility timeout so that a killed worker's messages come back within the test.
"""

from __future__ import annotations

import os

import recording
from celery import Celery

VISIBILITY_TIMEOUT = 3  # seconds before kombu hands an unacknowledged message out again

app = Celery("bgtasks_tests", broker=os.environ.get("BGTASKS_BROKER_URL", "redis://127.0.0.1:1/0"))
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # kombu looks for abandoned messages every interval * throttle seconds (100 by default).
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
    broker_connection_retry_on_startup=True,
    task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
    worker_prefetch_multiplier=1,
)


@app.task(name="tests.record")
def record(name: str, seconds: float = 0.0) -> None:
    """Record the call in ``BGTASKS_TEST_DIR`` after ``seconds`` of work (see recording.py)."""
    recording.record(name, seconds)
