#!/bin/sh
# Entrypoint of the postgres service of docker-compose.local.yml (the host's PostgreSQL binaries,
# run as the numeric uid/gid of the host's postgres user). Modelled on the official image:
#
#   first start (no $PGDATA/PG_VERSION): initdb, then a TEMPORARY server listening only on the
#   unix socket creates $POSTGRES_DB, sets $POSTGRES_PASSWORD and runs
#   /docker-entrypoint-initdb.d/*.sql and *.sh; it is stopped again;
#   every start: exec postgres on all addresses (TCP 5432) and the socket in /var/run/postgresql.
#
# So a `pg_isready` without -h reports "ready" during the first initialisation although no TCP
# listener exists yet (field failure C14): health checks and patchflow use TCP (127.0.0.1).
# Authentication: trust on the socket and loopback (inside the container only); a password
# (scram-sha-256) for connections from the compose network when POSTGRES_PASSWORD is set.
set -eu

: "${PGDATA:=/var/lib/postgresql/data/pgdata}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
SOCKET_DIR=/var/run/postgresql
export PGDATA

log() { echo "postgres-entrypoint: $*"; }

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    log "initialising a new cluster in $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=trust >/dev/null
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    else
        echo "host all all all trust" >>"$PGDATA/pg_hba.conf"
    fi
    pg_ctl -D "$PGDATA" -w -t 60 -o "-c listen_addresses='' -c unix_socket_directories=$SOCKET_DIR" start
    run_psql() { psql -X -q -v ON_ERROR_STOP=1 -h "$SOCKET_DIR" -U "$POSTGRES_USER" "$@"; }
    if [ "$POSTGRES_DB" != postgres ]; then
        echo "CREATE DATABASE :\"db\";" | run_psql -d postgres -v db="$POSTGRES_DB"
    fi
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        echo "ALTER ROLE :\"role\" PASSWORD :'pw';" \
            | run_psql -d postgres -v role="$POSTGRES_USER" -v pw="$POSTGRES_PASSWORD"
    fi
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sql) log "running $script"; run_psql -d "$POSTGRES_DB" -f "$script" ;;
            *.sh) log "running $script"; sh "$script" ;;
            *) ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    log "initialisation done"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories="$SOCKET_DIR" "$@"
