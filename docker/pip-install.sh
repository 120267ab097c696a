#!/bin/sh
# pip install inside an image build. Used by both Dockerfiles:
#
#   pip-install.sh --deps [EXTRA...]   cifarq's dependencies from pyproject.toml (plus the extras
#                                      named), in a layer that changes only with pyproject.toml
#   pip-install.sh --project [EXTRA]   cifarq itself, its dependencies already in place
#
# Where the packages come from:
# - docker/wheelhouse/, when it holds wheels (filled by docker/wheelhouse.sh on a connected
#   host): from those alone, no index. Air-gapped sites build this way, and so does this
#   project's CI, whose pinned torch lies on the build host's disk.
# - otherwise the package index. Behind a TLS-intercepting proxy, pass its CA as the build
#   secret `pip_ca` (compose: CIFARQ_PIP_CA=/path/to/ca.pem): it is mounted for this step only
#   and never lands in a layer.
set -eu

if ls /wheelhouse/*.whl >/dev/null 2>&1; then
  echo "pip: from docker/wheelhouse only ($(ls /wheelhouse/*.whl | wc -l) wheels)"
  set -- "$@" --no-index --find-links /wheelhouse
elif [ -s /run/secrets/pip_ca ]; then
  echo "pip: from the package index, trusting the CA of the build secret pip_ca"
  export PIP_CERT=/run/secrets/pip_ca
else
  echo "pip: from the package index"
fi

mode=$1
shift
case "$mode" in
  --deps)
    extras=""
    while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do extras="$extras $1"; shift; done
    python3 - "$extras" > /tmp/requirements.txt <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = list(project["dependencies"])
for extra in sys.argv[1].split():
    wanted += project["optional-dependencies"][extra]
print("\n".join(wanted))
PY
    pip install --requirement /tmp/requirements.txt "$@"
    rm /tmp/requirements.txt
    ;;
  --project)
    target=.
    if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then target=".[$1]"; shift; fi
    pip install "$target" "$@"
    pip check
    ;;
  *)
    echo "usage: pip-install.sh --deps [EXTRA...] | --project [EXTRA]" >&2
    exit 2
    ;;
esac
