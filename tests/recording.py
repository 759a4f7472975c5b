"""The body of the broker tests' task, shared by the Celery and the Procrastinate app.

Each call appends a line to ``{name}.started``, works for ``seconds``, then appends a line to
``{name}.done``, so duplicates show. The work ends early once a file named ``release`` exists in
the directory: a test can hold a task mid-work for as long as it needs, then let it go.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

DIR = Path(os.environ.get("BGTASKS_TEST_DIR", "."))


def record(name: str, seconds: float) -> None:
    with open(DIR / f"{name}.started", "a") as file:
        file.write("started\n")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (DIR / "release").exists():
        time.sleep(0.01)
    with open(DIR / f"{name}.done", "a") as file:
        file.write("done\n")
