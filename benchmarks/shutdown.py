"""Shutdown table: background tasks that finish when the server gets SIGTERM mid-work.

For each server, N requests each start one async task of S seconds (S above hypercorn's 3 s
graceful_timeout); once every response is in, the server's main process gets SIGTERM and is
left to exit on its own. Counts tasks whose side effect happened. Starlette's own background
tasks run beside bgtasks' middleware in both modes, in the same run.

    python benchmarks/shutdown.py            # prints a Markdown table
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import tasks_surviving_sigterm

SERVERS = ["uvicorn", "hypercorn-asyncio", "hypercorn-trio", "granian", "daphne"]
APPS = {
    "Starlette `BackgroundTask`": "server_app:starlette",
    "bgtasks middleware": "server_app:attached",
    "bgtasks middleware, `detached=True`": "server_app:detached",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    print(f"| server | {' | '.join(APPS)} |")
    print(f"|---|{'---|' * len(APPS)}")
    for server in SERVERS:
        cells = []
        for app in APPS.values():
            with tempfile.TemporaryDirectory() as workdir:
                try:
                    done = tasks_surviving_sigterm(
                        server, app, Path(workdir), args.tasks, args.seconds
                    )
                    cells.append(f"{done}/{args.tasks}")
                except AssertionError:  # a request failed: detached mode without lifespan
                    cells.append("refused (no lifespan)")
        print(f"| {server} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
