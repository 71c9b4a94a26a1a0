#!/bin/sh
# Compose service `temporal-namespace` (image temporalio/admin-tools), once the server
# answers: the namespace the app uses, with its retention, and the custom search
# attributes the order workflow sets. Safe on every `docker compose up`: an existing
# namespace keeps its retention (change it with `temporal operator namespace update`), and
# creating a search attribute that exists with the same type changes nothing (another type
# fails, loudly).
set -eu

: "${NAMESPACE:?}" "${NAMESPACE_RETENTION:?}" "${SEARCH_ATTRIBUTES:?}"
ADDRESS=${TEMPORAL_ADDRESS:-temporal:7233}
host=${ADDRESS%:*}
port=${ADDRESS##*:}
# Dial an IPv4 address: the name may also resolve to an IPv6 one the server does not bind.
ip=$(getent ahostsv4 "$host" 2>/dev/null | awk 'NR == 1 { print $1 }')
ADDRESS="${ip:-$host}:$port"

retry() { # command...: run it until it succeeds, at most SETUP_TRIES times
    tries=0
    until "$@"; do
        tries=$((tries + 1))
        if [ "$tries" -ge "${SETUP_TRIES:-30}" ]; then
            echo "temporal-namespace: gave up after $tries tries: $*" >&2
            return 1
        fi
        sleep "${SETUP_WAIT_S:-2}"
    done
}

retry temporal operator cluster health --address "$ADDRESS"

if temporal operator namespace describe --namespace "$NAMESPACE" --address "$ADDRESS" >/dev/null 2>&1; then
    echo "temporal-namespace: namespace $NAMESPACE exists"
else
    temporal operator namespace create --namespace "$NAMESPACE" \
        --retention "$NAMESPACE_RETENTION" --address "$ADDRESS"
fi

# SEARCH_ATTRIBUTES: space-separated Name=Type pairs. Retried: a new namespace takes a few
# seconds to reach every server role's cache ("Namespace ... is not found").
for pair in $SEARCH_ATTRIBUTES; do
    retry temporal operator search-attribute create --namespace "$NAMESPACE" \
        --address "$ADDRESS" --name "${pair%%=*}" --type "${pair#*=}"
done
echo "temporal-namespace: done"
