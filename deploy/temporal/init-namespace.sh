#!/bin/sh
# One-shot (compose service `temporal-init`, image temporalio/admin-tools): create the namespace and
# register longsong's custom search attributes (longsong/config.py SEARCH_ATTRIBUTES). Idempotent.
# Reads TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE (and TEMPORAL_API_KEY / TEMPORAL_TLS* if set) like every
# Temporal tool, and SEARCH_ATTRIBUTES="Name=Type Name=Type ...".
set -eu
ns="${TEMPORAL_NAMESPACE:-default}"
: "${SEARCH_ATTRIBUTES:?SEARCH_ATTRIBUTES is not set}"

tries=0
until temporal operator cluster health >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "Temporal at ${TEMPORAL_ADDRESS:-localhost:7233} is not healthy after 2 minutes" >&2
    exit 1
  fi
  sleep 2
done

if temporal operator namespace describe --namespace "$ns" >/dev/null 2>&1; then
  echo "namespace $ns exists"
else
  temporal operator namespace create --namespace "$ns" --retention "${NAMESPACE_RETENTION:-3d}"
fi

# A new namespace takes a few seconds to reach every server cache.
tries=0
until existing="$(temporal operator search-attribute list --namespace "$ns" 2>/dev/null)"; do
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then
    echo "namespace $ns is not usable after 60 s" >&2
    exit 1
  fi
  sleep 2
done
for sa in $SEARCH_ATTRIBUTES; do
  name="${sa%%=*}"
  type="${sa#*=}"
  if printf '%s\n' "$existing" | grep -qw "$name"; then
    echo "search attribute $name exists"
  else
    temporal operator search-attribute create --namespace "$ns" --name "$name" --type "$type"
  fi
done
echo "namespace $ns is ready"
