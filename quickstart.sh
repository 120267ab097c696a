#!/bin/sh
# Quick start: a virtualenv in .venv with cifarq and torch, then one training job on this
# machine, followed to the end, with its per-class results. Needs only Python >= 3.11.
#
#   ./quickstart.sh                 # = cifarq run train --epochs 2
#   ./quickstart.sh --epochs 5      # any flag of `cifarq submit train`
#
# With no CIFARQ_* variable set, everything lives under ~/.cifarq (SQLite, a filesystem
# broker, the data set); set them to use Redis and PostgreSQL instead. The worker it starts
# keeps running in the background for the next job: `.venv/bin/cifarq local stop` ends it.
set -eu
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Install again only when pyproject.toml changed: a second run starts at once.
stamp=.venv/.cifarq-installed
want=$(cksum < pyproject.toml)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing cifarq with torch into .venv (a few minutes the first time)..." >&2
  # The test extra is small and makes `python -m pytest -q` work in the same venv.
  .venv/bin/python -m pip install -q -e '.[worker,test]'
  printf '%s\n' "$want" > "$stamp"
fi

if [ "$#" -eq 0 ]; then
  set -- --epochs 2
fi
exec .venv/bin/cifarq run train "$@"
