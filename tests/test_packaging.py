"""The package as PyPI would ship it: build the sdist and the wheel with the declared build
requirements, check their contents and metadata, and run twine's strict check."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What the sdist's own test suite needs beside the test files themselves.
TEST_SUPPORT = [
    "conftest.py",
    "helpers.py",
    "servers.py",
    "server_app.py",
    "framework_apps.py",
    "example.py",
    "typecheck_api.py",
]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # An isolated build: pip fetches the build requirements pyproject.toml declares.
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def test_sdist_carries_what_its_tests_need(dist: Path) -> None:
    [sdist] = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for support in TEST_SUPPORT:
        assert f"tests/{support}" in names, support
    assert {"LICENSE", "README.md", "pyproject.toml", "bgtasks/py.typed"} <= names
    assert any(name.startswith("tests/test_") for name in names)
    assert not any("__pycache__" in name for name in names)


def test_wheel_ships_the_package_typed_with_its_licence(dist: Path) -> None:
    [wheel] = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [metadata_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    assert {"bgtasks/__init__.py", "bgtasks/py.typed", "bgtasks/fastapi.py"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith("tests/") for n in names)
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Name"] == "asgi-bgtasks"
    requires = metadata.get_all("Requires-Dist") or []
    runtime = [r for r in requires if "extra ==" not in r]
    assert [r.split(";")[0].split(">")[0].strip() for r in runtime] == ["anyio", "exceptiongroup"]
    urls = metadata.get_all("Project-URL") or []
    assert any(url.startswith("Repository, https://") for url in urls)
    classifiers = metadata.get_all("Classifier") or []
    for needed in ("Development Status", "Framework :: AnyIO", "Python :: 3.10", "Typing"):
        assert any(needed in c for c in classifiers), needed


def test_twine_check_strict_passes(dist: Path) -> None:
    files = [str(path) for path in dist.iterdir()]
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_links_are_absolute_so_they_work_on_pypi() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", readme)
    assert links
    relative = [link for link in links if not link.startswith(("https://", "http://", "#"))]
    assert relative == []
