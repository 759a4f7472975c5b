#!/usr/bin/env bash
# The whole test suite, as CI runs it (README's test command):
#   1. ruff, and mypy --strict for the machine's python3, the oldest and the newest Python;
#   2. pytest on python3 with the newest releases of the test extra;
#   3. pytest on every other CPython from 3.10 up that this machine has (pyenv's, or python3.X
#      on PATH), one per minor version, newest releases; BGTASKS_OTHER_PYTHONS=none skips this
#      (the public workflow runs one Python per job);
#   4. pytest on python3 with every requirement of the test extra at its floor.
# `bash tests/suite.sh --list-pythons` prints the Pythons of step 3.
set -euo pipefail
cd "$(dirname "$0")/.."

minor() { "$1" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'; }

other_pythons() {
    local own candidates=() seen=" " python version
    own=$(minor python3)
    if command -v pyenv >/dev/null; then
        while read -r version; do
            [[ $version =~ ^3\.[0-9]+\.[0-9]+$ ]] && candidates+=("$(pyenv prefix "$version")/bin/python")
        done < <(pyenv versions --bare)
    fi
    for version in 3.10 3.11 3.12 3.13 3.14; do
        command -v "python$version" >/dev/null && candidates+=("$(command -v "python$version")")
    done
    for python in "${candidates[@]}"; do
        version=$(minor "$python" 2>/dev/null) || continue  # pyenv shims of absent versions fail
        [[ $version == "$own" || $seen == *" $version "* ]] && continue
        [[ $(printf '%s\n' "$version" 3.10 | sort -V | head -1) == 3.10 ]] || continue
        seen+="$version "
        echo "$python"
    done
}

if [[ ${1:-} == --list-pythons ]]; then  # what step 3 would run on
    other_pythons
    exit
fi

python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
.venv/bin/ruff check bgtasks tests benchmarks
.venv/bin/mypy --strict bgtasks tests/typecheck_api.py tests/example.py
.venv/bin/mypy --strict --python-version 3.10 bgtasks
.venv/bin/mypy --strict --python-version 3.14 bgtasks
echo "+ pytest on $(python3 --version), newest releases"
.venv/bin/python -m pytest

if [[ ${BGTASKS_OTHER_PYTHONS:-} != none ]]; then
    for python in $(other_pythons); do
        venv=".venv-py$(minor "$python")"
        echo "+ pytest on $("$python" --version), newest releases ($venv)"
        "$python" -m venv "$venv"
        "$venv/bin/pip" install -q -e '.[test]'
        "$venv/bin/python" -m pytest
    done
fi

echo "+ pytest on $(python3 --version), the test extra at its floors"
python3 -m venv .venv-lowest
.venv/bin/uv pip install --python .venv-lowest/bin/python --resolution lowest-direct -e '.[test]'
.venv-lowest/bin/python -m pytest
