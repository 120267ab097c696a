#!/usr/bin/env bash
# Stand-ins for the three third-party images cifarq's compose file uses, built from Debian's own
# packages, for hosts that cannot pull from a registry (air-gapped sites, this project's CI):
#
#   python    Debian's python3 (3.11) + venv       in place of python:3.11-slim
#   redis     Debian's redis-server (7.0)          in place of redis:7.4-alpine
#   postgres  Debian's postgresql-15               in place of postgres:16-alpine
#
# Each behaves like the official image where docker-compose.yml relies on it: `python3 -m venv`
# works; redis-server and redis-cli are on the PATH, /data is the redis user's volume;
# PostgreSQL initialises its data volume on first start from POSTGRES_USER, POSTGRES_PASSWORD
# and POSTGRES_DB (password auth over TCP), and pg_isready is on the PATH. Every image runs as
# a non-root user by default.
#
# Needs root, mmdebstrap and a reachable Debian mirror (or apt proxy). Usage:
#
#   docker/base-images/build.sh >> .env      # prints the CIFARQ_*_IMAGE lines compose reads
#
# An image whose recipe (this folder and the mirror lines) has not changed is not built again:
# its tag carries the recipe's hash. --force builds anyway.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
docker=${DOCKER:-docker}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
force=false
[ "${1:-}" = "--force" ] && force=true

# Debian's minbase (Essential and Priority: required packages, as in debian:bookworm-slim, which
# the official images start from), slimmed like it: no manuals, translations or docs but the
# copyrights.
slim=(
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*.log'
)
sources=(
  "deb $mirror $suite main"
  "deb $mirror $suite-updates main"
  "deb $security_mirror $suite-security main"
)
recipe_hash=$(cat "$here"/* <(printf '%s\n' "${sources[@]}") | sha256sum | cut -c1-12)

# build NAME TAG PACKAGES [mmdebstrap options...] -- [docker import --change lines...]
build() {
  local name=$1 tag=$2 packages=$3
  shift 3
  local options=() changes=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do options+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  for change in "$@"; do changes+=(--change "$change"); done

  local image="cifarq-base/$name:$tag"
  local pinned="cifarq-base/$name:$tag-$recipe_hash"
  if ! $force && "$docker" image inspect "$pinned" >/dev/null 2>&1; then
    echo "$image: up to date ($pinned)" >&2
  else
    echo "$image: building from Debian $suite packages ($packages)" >&2
    local started=$SECONDS tarball
    tarball=$(mktemp --suffix=.tar)
    # merged-usr by symlinks, as debootstrap does: otherwise apt installs usrmerge, and perl with it.
    mmdebstrap --quiet --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      --include="$packages" "${slim[@]}" "${options[@]}" \
      "$suite" "$tarball" "${sources[@]}"
    "$docker" import "${changes[@]}" "$tarball" "$pinned" >/dev/null
    rm -f "$tarball"
    echo "$image: built in $((SECONDS - started)) s" >&2
    # Builds of earlier recipes go; anything still using them keeps its layers.
    "$docker" image ls --format '{{.Repository}}:{{.Tag}}' "cifarq-base/$name" |
      grep -Fx -v -e "$pinned" -e "$image" | xargs -r "$docker" rmi >/dev/null || true
  fi
  "$docker" tag "$pinned" "$image"
}

build python 3.11 python3,python3-venv,ca-certificates,passwd \
  -- 'ENV LANG=C.UTF-8' 'CMD ["python3"]'

build redis 7 redis-server \
  --customize-hook='mkdir -p "$1/data" && chroot "$1" chown redis:redis /data' \
  -- 'ENV LANG=C.UTF-8' 'VOLUME /data' 'WORKDIR /data' 'USER redis' 'EXPOSE 6379' 'CMD ["redis-server"]'

build postgres 15 postgresql-15 --skip=cleanup/run \
  --customize-hook="upload $here/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh" \
  --customize-hook='chmod 755 "$1/usr/local/bin/docker-entrypoint.sh"' \
  --customize-hook='mkdir -p "$1/var/lib/postgresql/data" "$1/run/postgresql" && chroot "$1" chown postgres:postgres /var/lib/postgresql/data /run/postgresql && chmod 700 "$1/var/lib/postgresql/data" && chmod 2777 "$1/run/postgresql"' \
  -- 'ENV LANG=C.UTF-8' 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
     'ENV PGDATA=/var/lib/postgresql/data' 'VOLUME /var/lib/postgresql/data' 'USER postgres' 'EXPOSE 5432' \
     'ENTRYPOINT ["docker-entrypoint.sh"]' 'CMD ["postgres"]'

# What compose reads (docker-compose.yml: CIFARQ_*_IMAGE).
echo "CIFARQ_PYTHON_IMAGE=cifarq-base/python:3.11"
echo "CIFARQ_REDIS_IMAGE=cifarq-base/redis:7"
echo "CIFARQ_POSTGRES_IMAGE=cifarq-base/postgres:15"
