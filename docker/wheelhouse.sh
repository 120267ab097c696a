#!/usr/bin/env bash
# Fills docker/wheelhouse/ with every wheel the images install (cifarq's dependencies, the
# worker, monitoring and build requirements), for image builds that reach no package index:
# an air-gapped GPU cluster, or a host whose pip finds torch on its own disk. Run it where pip
# reaches an index (or a mirror), with Docker and the images' base image at hand; the images
# then install from these wheels alone (docker/pip-install.sh).
#
#   docker/wheelhouse.sh           # fill (pip skips what is there already)
#   docker/wheelhouse.sh --clean   # empty it: the builds go back to the package index
#
# The host's pip downloads; the images' own Python then checks the result (a dry-run install
# with no index), because environment markers are evaluated against the interpreter that runs
# pip: Debian 12's Python 3.11.2 needs a package that 3.11.7 does not (redis-py's
# async-timeout, below 3.11.3), and pip's --python-version does not change that.
set -euo pipefail
cd "$(dirname "$0")/.."
wheelhouse=docker/wheelhouse
base_image=${CIFARQ_PYTHON_IMAGE:-python:3.11-slim}
docker=${DOCKER:-docker}
mkdir -p "$wheelhouse"
if [ "${1:-}" = "--clean" ]; then
  find "$wheelhouse" -name '*.whl' -delete
  exit 0
fi

# The images' platform (Debian bookworm: glibc 2.36, x86_64) and every older manylinux tag it
# runs, so that the host's own platform doesn't matter.
platforms=()
for minor in $(seq 36 -1 5); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
for legacy in manylinux2014 manylinux2010 manylinux1; do platforms+=(--platform "${legacy}_x86_64"); done
download() {
  python3 -m pip download --quiet --only-binary=:all: --python-version 3.11 "${platforms[@]}" \
    --dest "$wheelhouse" "$@"
}

build_requires=$(python3 -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
# shellcheck disable=SC2086  # one word per requirement
download '.[worker,monitoring]' $build_requires

# What the images' Python still misses, a requirement at a time, until nothing is missing.
for _ in 1 2 3 4 5; do
  missing=$("$docker" run --rm --network none -v "$PWD:/src:ro" "$base_image" sh -c '
    cp -r /src/pyproject.toml /src/README.md /src/shared /src/worker /src/api_cli /tmp/ && cd /tmp &&
    python3 -m venv /tmp/venv &&
    /tmp/venv/bin/pip install --quiet --dry-run --no-index --find-links /src/docker/wheelhouse ".[worker,monitoring]" 2>&1' |
    sed -n 's/.*No matching distribution found for \([^;]*\).*/\1/p' | tr -d ' ' || true)
  if [ -z "$missing" ]; then
    echo "$(ls "$wheelhouse"/*.whl | wc -l) wheels, $(du -sh "$wheelhouse" | cut -f1), in $wheelhouse: complete for $base_image" >&2
    exit 0
  fi
  echo "the images' Python also needs: $missing" >&2
  download "$missing"
done
echo "error: $wheelhouse is still incomplete for $base_image" >&2
exit 1
