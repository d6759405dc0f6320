#!/usr/bin/env bash
# scripts/kube/smoke.sh - end-to-end check of the control plane that
# `scripts/kube.sh up` started: a Deployment of fake (kwok) pods becomes
# available, an env change rolls out through a second ReplicaSet, and a
# coordination.k8s.io Lease can be created. Cleans up after itself.
#
# Usage: scripts/kube/smoke.sh   (after scripts/kube.sh up)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
eval "$("${ROOT}/scripts/kube.sh" env)"
NS="reco-smoke-$$"

k() { "${RECO_KUBECTL}" "$@"; }
step() { printf '[smoke] %s\n' "$*" >&2; }
cleanup() { k delete namespace "${NS}" --wait=false --ignore-not-found >/dev/null 2>&1 || true; }
trap cleanup EXIT

step "server version: $(k version -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -1)"
k create namespace "${NS}" >/dev/null
k -n "${NS}" wait --for=jsonpath='{.metadata.name}'=default serviceaccount/default --timeout=60s >/dev/null

step "deployment demo (2 replicas) rolls out on kwok nodes"
k -n "${NS}" create deployment demo --image=registry.invalid/x:1 --replicas=2 >/dev/null
k -n "${NS}" rollout status deployment/demo --timeout=60s
k -n "${NS}" get pods -o wide

step "set env FOO=bar -> second ReplicaSet, rollout completes"
k -n "${NS}" set env deployment/demo FOO=bar >/dev/null
k -n "${NS}" rollout status deployment/demo --timeout=60s
rs_count="$(k -n "${NS}" get replicasets -l app=demo -o name | wc -l)"
[[ "${rs_count}" -ge 2 ]] || { echo "expected 2 ReplicaSets, got ${rs_count}" >&2; exit 1; }
k -n "${NS}" get replicasets -l app=demo
k -n "${NS}" delete deployment demo --wait=true --timeout=60s >/dev/null

step "create a coordination.k8s.io/v1 Lease"
k -n "${NS}" create -f - <<EOF >/dev/null
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: smoke-lease
spec:
  holderIdentity: smoke
  leaseDurationSeconds: 15
EOF
k -n "${NS}" get lease smoke-lease -o jsonpath='{.spec.holderIdentity}{"\n"}' | grep -qx smoke
k -n "${NS}" delete lease smoke-lease >/dev/null

step "OK"
