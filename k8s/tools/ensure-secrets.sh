#!/usr/bin/env bash
# Create the two Secrets the serving pods mount, in namespace $1 (default sightline), when they
# do not exist yet. An existing one is left alone: a new feedback key would make every replica
# refuse the labels for request ids signed with the old one.
#   sightline-feedback/key:   the HMAC key that signs request ids (--feedback-key-file)
#   sightline-admin/tokens:   the operators' tokens for SetWeight, Rollback, Promote
# Read the admin token back with
#   kubectl -n sightline get secret sightline-admin -o jsonpath='{.data.tokens}' | base64 -d
set -euo pipefail
ns=${1:-sightline}
random_hex() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

for secret in sightline-feedback:key sightline-admin:tokens; do
    name=${secret%%:*} key=${secret#*:}
    if kubectl -n "$ns" get secret "$name" >/dev/null 2>&1; then
        echo "secret $ns/$name exists: kept"
        continue
    fi
    # From a file, not --from-literal: the value never shows in the process list.
    kubectl -n "$ns" create secret generic "$name" --from-file="$key=/dev/stdin" \
        <<<"$(random_hex)"
done
