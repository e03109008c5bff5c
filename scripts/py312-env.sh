#!/usr/bin/env bash
# Prints the path of a Python 3.12 virtual environment with requirements.lock installed (DGL leaves
# itself out there: no DGL wheel for 3.12 imports with current PyTorch), building it if needed.
#
# On PyPI, torch for Linux is a CUDA build of about 3 GB with its NVIDIA libraries, so the wheels are
# kept in a wheelhouse outside the checkout (downloaded once, then only what a changed lock adds), and
# the environment itself per lock (keyed by its hash), so that a fresh clone in CI does not download
# or unpack them again. Both live under ${XDG_CACHE_HOME:-~/.cache}/alignahead/. Exit 3 when no
# Python 3.12 interpreter is found (tried: $PYTHON312, python3.12, pyenv's 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  for candidate in "${PYTHON312:-}" python3.12; do
    [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { command -v "$candidate"; return; }
  done
  if command -v pyenv >/dev/null 2>&1; then
    version=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | tail -n 1 || true)
    [ -n "$version" ] && { echo "$(pyenv root)/versions/$version/bin/python3.12"; return; }
  fi
  return 1
}

python=$(find_python) || { echo "no Python 3.12 interpreter found" >&2; exit 3; }
cache=${XDG_CACHE_HOME:-$HOME/.cache}/alignahead
key=$(cat requirements.lock | sha256sum | cut -c1-12)
venv=$cache/venv-py3.12-$key
if [ ! -f "$venv/.installed" ]; then
  mkdir -p "$cache/wheels-py3.12"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip download -q --disable-pip-version-check -d "$cache/wheels-py3.12" -r requirements.lock >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-index --find-links "$cache/wheels-py3.12" \
    -r requirements.lock >&2
  touch "$venv/.installed"
fi
echo "$venv"
