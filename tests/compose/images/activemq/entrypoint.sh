#!/bin/bash
# Starts the broker in the foreground (Debian's init script daemonises and waits on a pid
# file). The login comes from the environment and is never written out or logged.
set -euo pipefail

mkdir -p "$ACTIVEMQ_BASE/tmp"
config="$ACTIVEMQ_CONF/activemq.xml"
if [[ -z "${ACTIVEMQ_CONNECTION_USER:-}" ]]; then
    config="$ACTIVEMQ_BASE/tmp/activemq-anonymous.xml"
    sed '/<!-- authentication -->/,/<!-- end authentication -->/d' "$ACTIVEMQ_CONF/activemq.xml" > "$config"
fi

# shellcheck disable=SC2086  # ACTIVEMQ_OPTS holds several options
exec java $ACTIVEMQ_OPTS \
    --add-opens java.base/java.lang=ALL-UNNAMED \
    --add-opens java.base/java.util=ALL-UNNAMED \
    --add-opens java.base/java.util.concurrent=ALL-UNNAMED \
    --add-opens java.base/java.net=ALL-UNNAMED \
    -Djava.io.tmpdir="$ACTIVEMQ_BASE/tmp" \
    -Dactivemq.classpath="$ACTIVEMQ_CONF" \
    -Dactivemq.home="$ACTIVEMQ_HOME" \
    -Dactivemq.base="$ACTIVEMQ_BASE" \
    -Dactivemq.conf="$ACTIVEMQ_CONF" \
    -Dactivemq.data="$ACTIVEMQ_DATA" \
    -Dlog4j.configuration="file:$ACTIVEMQ_CONF/log4j.properties" \
    -jar "$ACTIVEMQ_HOME/bin/activemq.jar" start "xbean:file:$config" "$@"
