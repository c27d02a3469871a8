#!/bin/sh
# One-shot (compose service `api-db-init`, image postgres): create the HTTP API's own role and database (keys,
# usage, quotas) in the stack's PostgreSQL and set the role's password to API_DB_PASSWORD. Temporal's databases
# and user stay apart. `longsong serve` creates the tables itself (Alembic) at start. Safe to run on every `up`.
# Connection as the server's superuser from the standard PGHOST / PGPORT / PGUSER / PGPASSWORD variables.
set -eu
: "${PGHOST:?PGHOST is not set}" "${PGUSER:?PGUSER is not set}" "${API_DB_PASSWORD:?API_DB_PASSWORD is not set}"
role="${API_DB_USER:-longsong}"
db="${API_DB_NAME:-longsong}"

until pg_isready -q -d postgres; do
  echo "waiting for PostgreSQL at $PGHOST"
  sleep 1
done

# psql quotes the variables: :'x' as a literal, :"x" as an identifier.
psql -X -q -v ON_ERROR_STOP=1 -d postgres -v role="$role" -v db="$db" -v password="$API_DB_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')
\gexec
ALTER ROLE :"role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')
\gexec
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
SQL
echo "database $db (owner $role) is ready"
