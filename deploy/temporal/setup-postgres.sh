#!/bin/sh
# One-shot (compose service `temporal-schema`, image temporalio/admin-tools): create Temporal's two
# PostgreSQL databases and bring their schemas up to date. Safe to run again on every `up`.
set -eu
host="${POSTGRES_SEEDS:-postgresql}"
port="${DB_PORT:-5432}"
user="${POSTGRES_USER:-temporal}"
export SQL_PASSWORD="${POSTGRES_PWD:?POSTGRES_PWD is not set}"

until nc -z "$host" "$port"; do
  echo "waiting for PostgreSQL at $host:$port"
  sleep 1
done

sql() { temporal-sql-tool --plugin postgres12 --ep "$host" -p "$port" -u "$user" "$@"; }

for pair in temporal:temporal temporal_visibility:visibility; do
  db="${pair%%:*}"
  schema="${pair#*:}"
  sql --db "$db" create || echo "database $db already exists"
  sql --db "$db" setup-schema -v 0.0
  sql --db "$db" update-schema -d "/etc/temporal/schema/postgresql/v12/$schema/versioned"
done
echo "Temporal schemas are up to date"
