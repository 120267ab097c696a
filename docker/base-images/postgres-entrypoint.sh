#!/bin/sh
# The part of the official postgres image's entrypoint that cifarq's compose file relies on:
# on the first start (an empty data volume), create the cluster with POSTGRES_USER as its
# superuser and POSTGRES_PASSWORD as that user's password, create POSTGRES_DB, and accept
# password-authenticated (scram-sha-256) connections from any address; then run the server.
set -eu

if [ "${1:-}" != "postgres" ]; then
  exec "$@"
fi
shift  # the rest are options for the server

: "${PGDATA:=/var/lib/postgresql/data}"
user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "error: the database is uninitialized and POSTGRES_PASSWORD is not set" >&2
    exit 1
  fi
  # The password goes through a file readable by this user only, never a command line.
  umask 077
  pwfile=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" --encoding=UTF8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"

  # A server on the socket only while the database is created, as the official image does.
  pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --silent start
  if [ "$database" != "postgres" ]; then
    psql --username="$user" --dbname=postgres --set=ON_ERROR_STOP=1 --quiet \
      --set=db="$database" <<'SQL'
CREATE DATABASE :"db";
SQL
  fi
  pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
  echo "PostgreSQL init process complete; ready for start up."
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
