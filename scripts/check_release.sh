#!/usr/bin/env bash
# What a maintainer checks before a release: build the sdist and the wheel (the wheel from the
# sdist, as `python -m build` does), `twine check` both, show what the wheel holds, then install
# the sdist with its test extra into a fresh venv and run its own test suite from the unpacked sdist.
#
#   bash scripts/check_release.sh [TORCH_REQUIREMENT]     # default: torch==2.13.0 (a CPU build here)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
torch_req=${1:-torch==2.13.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/tools"
"$work/tools/bin/pip" install -q --disable-pip-version-check build twine
"$work/tools/bin/python" -m build --outdir "$work/dist" "$repo"
"$work/tools/bin/twine" check --strict "$work"/dist/*
echo "--- wheel contents"
python3 -m zipfile -l "$work"/dist/*.whl
echo "--- sdist: install with [test], run its tests"
mkdir "$work/src"
tar -xzf "$work"/dist/*.tar.gz -C "$work/src"
src=$(echo "$work"/src/chargen-*)
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "$torch_req"
"$work/venv/bin/pip" install -q --disable-pip-version-check "$src[test]"
cd "$src" && "$work/venv/bin/python" -m pytest -q -p no:cacheprovider
