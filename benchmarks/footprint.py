"""Import time and memory per queued task: bgtasks beside starlette.background.

Import time: a fresh interpreter imports the module, ``-X importtime`` reports the cumulative
microseconds of its top-level import; median over repeats. Memory: tracemalloc measures the
bytes allocated by queueing N tasks (``add_task(func, i)``) on one list, divided by N.

    python benchmarks/footprint.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import statistics
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

MODULES = {"anyio": "anyio", "bgtasks": "bgtasks", "Starlette": "starlette.background"}


def import_us(module: str) -> float:
    # A trio app's import: nothing else imported first. Bytecode is compiled beforehand (see
    # main), as pip does at install time, so source compilation is not counted.
    output = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    ).stderr
    top = module.split(".")[0]
    times = [
        int(match.group(1))
        for match in re.finditer(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)\s*$", output, re.M)
        if match.group(2) in (module, top)
    ]
    return float(max(times))


def noop(item: int) -> None:
    return None


def bytes_per_task(factory: Any, count: int = 20000) -> float:
    tasks = factory()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for item in range(count):
        tasks.add_task(noop, item)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    import starlette.background

    import bgtasks

    for module in (bgtasks, starlette.background):
        compileall.compile_dir(Path(module.__file__).parent, quiet=1)  # type: ignore[arg-type]
    imports = {
        name: statistics.median(import_us(module) for _ in range(args.repeats))
        for name, module in MODULES.items()
    }
    memory = {
        "bgtasks": bytes_per_task(bgtasks.BackgroundTasks),
        "Starlette": bytes_per_task(starlette.background.BackgroundTasks),
    }
    print(
        f"Import: median of {args.repeats} fresh interpreters (-X importtime, cumulative, "
        "bytecode compiled as at install).\n"
    )
    print("| | anyio alone | bgtasks | Starlette | bgtasks − anyio | bgtasks ÷ Starlette |")
    print("|---|---|---|---|---|---|")
    a, b, s = imports["anyio"], imports["bgtasks"], imports["Starlette"]
    print(
        f"| import time, ms | {a / 1000:.1f} | {b / 1000:.1f} | {s / 1000:.1f} "
        f"| {(b - a) / 1000:+.1f} | {b / s:.2f}× |"
    )
    b, s = memory["bgtasks"], memory["Starlette"]
    print(f"| memory per queued task, bytes | – | {b:.0f} | {s:.0f} | – | {b / s:.2f}× |")


if __name__ == "__main__":
    main()
