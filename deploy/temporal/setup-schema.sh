#!/bin/sh
# Compose service `temporal-schema` (image temporalio/admin-tools), before the server
# starts: Temporal's two databases on the compose PostgreSQL, their schemas brought to the
# head this admin-tools version ships. Safe on every `docker compose up`: create leaves an
# existing database alone, setup-schema -v 0.0 only adds the version table, and
# update-schema applies only the versions a database lacks.
set -eu

SCHEMA_DIR=${SCHEMA_DIR:-/etc/temporal/schema/postgresql/v12}

sql() {
    # The password comes from SQL_PASSWORD.
    temporal-sql-tool --plugin "$DB" --ep "$POSTGRES_SEEDS" -p "$DB_PORT" -u "$POSTGRES_USER" "$@"
}

setup() { # database, schema folder
    echo "temporal-schema: database $1"
    sql --db "$1" create
    sql --db "$1" setup-schema -v 0.0
    sql --db "$1" update-schema -d "$SCHEMA_DIR/$2/versioned"
}

setup "${DBNAME:-temporal}" temporal
setup "${VISIBILITY_DBNAME:-temporal_visibility}" visibility
echo "temporal-schema: done"
