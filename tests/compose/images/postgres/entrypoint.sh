#!/bin/bash
# Entry point of the Postgres stand-in, after the official image's docker-entrypoint.sh:
# as root, hand PGDATA to the postgres user and start again as that user; on an empty
# PGDATA, create the cluster, the password-protected account and POSTGRES_DB, and run the
# init scripts with the server listening on its socket only; then run the server.
# The password goes to initdb through a pipe: it is never logged or stored in clear.
set -Eeuo pipefail

export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

if [[ "${1:-}" == -* ]]; then
    set -- postgres "$@"
fi
if [[ "${1:-}" != postgres ]]; then
    exec "$@"
fi

if [[ "$(id -u)" == 0 ]]; then
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    HOME=/var/lib/postgresql exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

run_init_scripts() {
    local psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER" --dbname "$POSTGRES_DB")
    local script
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sh)
                echo "running $script"
                if [[ -x "$script" ]]; then "$script"; else source "$script"; fi
                ;;
            *.sql)
                echo "running $script"
                "${psql[@]}" --file "$script"
                ;;
            *.sql.gz)
                echo "running $script"
                gunzip --stdout "$script" | "${psql[@]}"
                ;;
            *)
                echo "ignoring $script"
                ;;
        esac
    done
}

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    if [[ -z "${POSTGRES_PASSWORD:-}" ]]; then
        echo "error: the database is uninitialised and POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    # Socket connections are trusted; every TCP connection needs the password.
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth-local=trust --auth-host=scram-sha-256 ${POSTGRES_INITDB_ARGS:-}
    printf '\nhost all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"

    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait start
    if [[ "$POSTGRES_DB" != postgres ]]; then
        psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER" --dbname postgres \
            --set database="$POSTGRES_DB" <<< 'CREATE DATABASE :"database";'
    fi
    run_init_scripts
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop
    echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@"
