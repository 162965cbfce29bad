#!/usr/bin/env bash
# Publish an artifact into the cluster's model repository, as `make deploy` does locally:
#   k8s/tools/publish.sh artifacts/latest [--label stable] [--name NAME]
# The serving pods see the new version at their next poll (hot reload). Needs kubectl with a
# context on the cluster; the fleet's namespace is sightline (k8s/base).
set -euo pipefail
artifact=${1:?usage: publish.sh ARTIFACT [publish options]}
shift
ns=sightline
here=$(cd "$(dirname "$0")" && pwd)
pod=sightline-publisher

kubectl apply -k "$here" >/dev/null
trap 'kubectl -n "$ns" delete pod "$pod" --wait=false >/dev/null' EXIT
kubectl -n "$ns" wait --for=condition=Ready "pod/$pod" --timeout=180s >/dev/null
# Python's tarfile rather than kubectl cp: kubectl cp needs a tar binary in the image.
tar -C "$artifact" --exclude=./logs -cf - . | kubectl -n "$ns" exec -i "$pod" -- python -c \
    'import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode="r|").extractall("/work/artifact", filter="data")'
kubectl -n "$ns" exec "$pod" -- python -m serving.repository.publish --models /models \
    /work/artifact "$@"
