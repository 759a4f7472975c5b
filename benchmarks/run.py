"""Run every benchmark and write the results into benchmarks/README.md.

    python benchmarks/run.py          # about fifteen minutes on a 2-core machine

Each part is its own script and can be run alone; see the docstring at the top of each.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = [
    ("In process", "inprocess.py"),
    ("End to end", "e2e.py"),
    ("Sustained load", "sustained.py"),
    ("Footprint", "footprint.py"),
    ("Graceful shutdown", "shutdown.py"),
]


def versions() -> str:
    names = ["anyio", "starlette", "uvicorn", "uvloop", "httptools", "trio"]
    from importlib.metadata import version

    return ", ".join(f"{name} {version(name)}" for name in names)


def main() -> None:
    sections = []
    for title, script in PARTS:
        print(f"running {script}", file=sys.stderr, flush=True)
        started = time.monotonic()
        output = subprocess.run(
            [sys.executable, str(HERE / script)], capture_output=True, text=True, check=True
        ).stdout
        minutes = (time.monotonic() - started) / 60
        sections.append(
            f"## {title}\n\n`python benchmarks/{script}` ({minutes:.1f} min)\n\n{output.strip()}\n"
        )
    readme = HERE / "README.md"
    notes = readme.read_text().split("<!-- results -->")[0] if readme.exists() else ""
    readme.write_text(
        notes.rstrip()
        + "\n\n<!-- results -->\n\n"
        + f"Made by `python benchmarks/run.py` on {time.strftime('%Y-%m-%d')}: Python "
        + f"{platform.python_version()}, {versions()}.\n\n"
        + "\n".join(sections)
    )


if __name__ == "__main__":
    main()
