#!/bin/sh
# Flower can shut workers down and revoke tasks: it never runs without a password. The
# password reaches Flower through its environment (FLOWER_BASIC_AUTH), never a command line.
set -eu
if [ -z "${FLOWER_PASSWORD:-}" ]; then
  echo "error: set FLOWER_PASSWORD (in .env, see docs/deployment.md): Flower can shut workers down" >&2
  exit 1
fi
FLOWER_BASIC_AUTH="${FLOWER_USER:-cifarq}:${FLOWER_PASSWORD}"
export FLOWER_BASIC_AUTH
unset FLOWER_PASSWORD
exec celery -A shared.celery_app:app flower "$@"
