#!/bin/sh
# Quick start: a virtualenv in .venv with cifarq and torch, then one training job on this
# machine, followed to the end, with its per-class results. Needs only Python >= 3.11.
#
#   ./quickstart.sh                 # = cifarq run train --epochs 2
#   ./quickstart.sh --epochs 5      # any flag of `cifarq submit train`
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ./quickstart.sh
#                                   # a host without an NVIDIA GPU: torch's CPU wheels, not 3 GB of CUDA libraries
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
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    # The pinned versions, from that index first; the install below then finds them satisfied.
    pins=$(sed -n 's/^ *"\(torch\(vision\)\{0,1\}==[^"]*\)".*/\1/p' pyproject.toml)
    # shellcheck disable=SC2086
    .venv/bin/python -m pip install -q --index-url "$TORCH_INDEX_URL" $pins
  fi
  # report: `cifarq report`, the first thing asked for after the results. test: small, and makes
  # `python -m pytest -q` work in the same venv.
  .venv/bin/python -m pip install -q -e '.[worker,test,report]'
  printf '%s\n' "$want" > "$stamp"
fi

if [ "$#" -eq 0 ]; then
  set -- --epochs 2
fi
exec .venv/bin/cifarq run train "$@"
