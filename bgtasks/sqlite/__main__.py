"""``python -m bgtasks.sqlite PATH [retry]``: what an SQLiteDispatcher's file holds.

Prints the counts of queued, running and failed calls, then each failed call with its
arguments, attempts and error; ``retry`` queues the failed calls again. It reads the file
only: no task is imported or run here.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import SQLiteDispatcher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bgtasks.sqlite",
        description="Show the calls in an SQLiteDispatcher's file, or queue the failed again.",
    )
    parser.add_argument("path", help="the SQLite file the dispatcher uses")
    parser.add_argument(
        "action", nargs="?", choices=["status", "retry"], default="status", help="default: status"
    )
    options = parser.parse_args(argv)
    if not os.path.isfile(options.path):
        print(f"error: {options.path!r} is not a file", file=sys.stderr)
        return 2
    try:
        jobs = SQLiteDispatcher(options.path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if options.action == "retry":
        print(f"queued again: {jobs.retry_failed()}")
        return 0
    status = jobs.status()
    print(" ".join(f"{state}: {count}" for state, count in status.items()))
    for call in jobs.failed():
        arguments = [repr(arg) for arg in call.args]
        arguments += [f"{key}={value!r}" for key, value in call.kwargs.items()]
        print(f"\nfailed #{call.id} {call.name}({', '.join(arguments)}), {call.attempts} attempts")
        print(call.error.rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
