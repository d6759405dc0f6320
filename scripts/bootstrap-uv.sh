#!/usr/bin/env bash
# scripts/bootstrap-uv.sh VERSION DIR - install uv==VERSION into a venv at DIR (idempotent).
# The front door (`make demo`, `make test`) must work on a machine that has python3 and PyPI and
# nothing else: no uv on PATH, no ~/.local. PIP_CACHE_DIR / PIP_INDEX_URL are honoured as usual.
set -euo pipefail
version="${1:?usage: bootstrap-uv.sh VERSION DIR}"
dir="${2:?usage: bootstrap-uv.sh VERSION DIR}"
say() { printf '[bootstrap] %s\n' "$*" >&2; }

if [[ -x "$dir/bin/uv" ]] && [[ "$("$dir/bin/uv" --version)" == "uv $version"* ]]; then
  exit 0
fi
python="$(command -v python3 || true)"
[[ -n "$python" ]] || { say "ERROR: python3 is needed to install uv $version (apt-get install python3-venv)"; exit 1; }
say "installing uv $version into $dir (pip, from PyPI)"
# A half-finished install from an interrupted run fails the version check above: start afresh.
# The venv stays out of sight (venv/); bin/ holds only uv and uvx, so that the Makefile can put
# it first on PATH without shadowing the machine's python3 and pip.
rm -rf "$dir"
if ! "$python" -m venv "$dir/venv" >/dev/null 2>&1; then
  say "ERROR: '$python -m venv $dir/venv' failed: install python3-venv (Debian) and retry"
  exit 1
fi
"$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$version"
mkdir -p "$dir/bin"
ln -s ../venv/bin/uv ../venv/bin/uvx "$dir/bin/"
"$dir/bin/uv" --version >&2
