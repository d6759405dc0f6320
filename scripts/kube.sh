#!/usr/bin/env bash
# scripts/kube.sh - a real, local Kubernetes control plane for the reco platform.
#
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
# and kwok from source through the Go module proxy (wrapper modules with pinned
# go.mod/go.sum live in scripts/kube/build*/), then runs them as plain local
# processes bound to 127.0.0.1. kwok fakes Nodes and Pods, so Deployments roll
# out without kubelets or container runtimes.
#
# Usage: scripts/kube.sh build | up | down [--purge] | status | env
#   build   build the binaries into the cache (skipped when already built)
#   up      build if needed, start everything, wait until ready (idempotent)
#   down    stop everything (SIGTERM, then SIGKILL); --purge also deletes state
#   status  one line per component; exit 0 only if all are running
#   env     print `export KUBECONFIG=...` and `export RECO_KUBECTL=...`
#
# Environment:
#   RECO_CACHE_DIR  binary cache root     (default ~/.cache/reco) -> kube/<k8s-version>/bin
#   RECO_STACK_DIR  runtime state root    (default <repo>/.stack)  -> kube/
#   RECO_KUBE_PORT  kube-apiserver port   (default 6443)
#   RECO_ETCD_PORT  etcd client port      (default 2379)
#   RECO_ETCD_PEER_PORT  etcd peer port   (default 2380)
#   RECO_KCM_PORT, RECO_SCHEDULER_PORT  health ports (default 10257, 10259)
#   RECO_KUBE_UP_TIMEOUT  seconds to wait for readiness in `up` (default 180)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
KUBE_SRC="${SCRIPT_DIR}/kube"

# Versions come from the committed wrapper modules: one source of truth.
mod_version() { # <go.mod> <module path>
  awk -v m="$2" '($1 == m && $2 ~ /^v/) {print $2; exit} ($1 == "require" && $2 == m) {print $3; exit}' "$1"
}
K8S_VERSION="$(mod_version "${KUBE_SRC}/build-k8s/go.mod" k8s.io/kubernetes)"
ETCD_VERSION="$(mod_version "${KUBE_SRC}/build-etcd/go.mod" go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(mod_version "${KUBE_SRC}/build-kwok/go.mod" sigs.k8s.io/kwok)"

BIN_DIR="$(realpath -m "${RECO_CACHE_DIR:-${HOME}/.cache/reco}")/kube/${K8S_VERSION}/bin"
STACK_DIR="$(realpath -m "${RECO_STACK_DIR:-${REPO_ROOT}/.stack}")/kube"
PKI_DIR="${STACK_DIR}/pki"
LOG_DIR="${STACK_DIR}/logs"
RUN_DIR="${STACK_DIR}/run"
KUBECONFIG_FILE="${STACK_DIR}/kubeconfig"

KUBE_PORT="${RECO_KUBE_PORT:-6443}"
ETCD_PORT="${RECO_ETCD_PORT:-2379}"
ETCD_PEER_PORT="${RECO_ETCD_PEER_PORT:-2380}"
UP_TIMEOUT="${RECO_KUBE_UP_TIMEOUT:-180}"
STOP_GRACE=15 # seconds between SIGTERM and SIGKILL
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
KUBECTL="${BIN_DIR}/kubectl"

log() { printf '[kube] %s\n' "$*" >&2; }
die() { printf '[kube] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------

find_go() {
  if command -v go >/dev/null 2>&1; then command -v go
  elif [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go
  else die "no Go toolchain found (need go >= 1.26 on PATH or at /usr/local/go/bin/go)"
  fi
}

# Hash of everything that determines a group's binaries; stored next to them.
build_stamp() { # <wrapper dir> <extra text>
  cat "$1/go.mod" "$1/go.sum" <(printf '%s' "$2") | sha256sum | cut -d' ' -f1
}

is_built() { # <group> <stamp> <binary...>
  local group="$1" stamp="$2"; shift 2
  local b
  for b in "$@"; do [[ -x "${BIN_DIR}/${b}" ]] || return 1; done
  [[ "$(cat "${BIN_DIR}/.stamp-${group}" 2>/dev/null)" == "${stamp}" ]]
}

go_build() { # <wrapper dir> <output> <ldflags> <package>
  local dir="$1" out="$2" ldflags="$3" pkg="$4" start
  if [[ -z "${GO:-}" ]]; then
    GO="$(find_go)"
    log "using $("${GO}" version) ($(command -v "${GO}"))"
  fi
  start=$(date +%s)
  log "go build ${pkg} -> ${out}"
  (cd "${dir}" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
    "${GO}" build -trimpath -ldflags "${ldflags}" -o "${out}.tmp" "${pkg}")
  mv -f "${out}.tmp" "${out}"
  log "built $(basename "${out}") in $(( $(date +%s) - start ))s"
}

k8s_ldflags() {
  local v="${K8S_VERSION#v}" major minor date pkg flags="-s -w"
  major="${v%%.*}"; minor="${v#*.}"; minor="${minor%%.*}"
  date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
    flags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.gitCommit=go-module-proxy -X ${pkg}.buildDate=${date}"
  done
  echo "${flags}"
}

build_k8s() {
  local stamp b
  stamp="$(build_stamp "${KUBE_SRC}/build-k8s" "k8s ${K8S_VERSION}")"
  if is_built k8s "${stamp}" "${K8S_BINARIES[@]}"; then log "kubernetes ${K8S_VERSION}: cached"; return; fi
  local ldflags; ldflags="$(k8s_ldflags)"
  for b in "${K8S_BINARIES[@]}"; do
    go_build "${KUBE_SRC}/build-k8s" "${BIN_DIR}/${b}" "${ldflags}" "k8s.io/kubernetes/cmd/${b}"
  done
  echo "${stamp}" > "${BIN_DIR}/.stamp-k8s"
}

build_etcd() {
  local stamp; stamp="$(build_stamp "${KUBE_SRC}/build-etcd" "etcd ${ETCD_VERSION}")"
  if is_built etcd "${stamp}" etcd; then log "etcd ${ETCD_VERSION}: cached"; return; fi
  go_build "${KUBE_SRC}/build-etcd" "${BIN_DIR}/etcd" "-s -w" .
  echo "${stamp}" > "${BIN_DIR}/.stamp-etcd"
}

build_kwok() {
  local stamp ldflags
  stamp="$(build_stamp "${KUBE_SRC}/build-kwok" "kwok ${KWOK_VERSION}")"
  if is_built kwok "${stamp}" kwok; then log "kwok ${KWOK_VERSION}: cached"; return; fi
  ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION}"
  go_build "${KUBE_SRC}/build-kwok" "${BIN_DIR}/kwok" "${ldflags}" sigs.k8s.io/kwok/cmd/kwok
  echo "${stamp}" > "${BIN_DIR}/.stamp-kwok"
}

cmd_build() {
  mkdir -p "${BIN_DIR}"
  [[ "${BUILD_LOCKED:-}" == 1 ]] || { take_lock "${BIN_DIR}/../.build.lock" 7200; BUILD_LOCKED=1; }
  build_etcd
  build_kwok
  build_k8s
  log "binaries ready in ${BIN_DIR}"
}

# ---------------------------------------------------------------------------
# state: PKI, tokens, kubeconfigs
# ---------------------------------------------------------------------------

KCM_PORT="${RECO_KCM_PORT:-10257}"             # kube-controller-manager health (https)
SCHEDULER_PORT="${RECO_SCHEDULER_PORT:-10259}" # kube-scheduler health (https)
API_URL="https://127.0.0.1:${KUBE_PORT}"
ETCD_URL="http://127.0.0.1:${ETCD_PORT}"
SERVICE_CIDR="10.96.0.0/16"
KUBERNETES_SERVICE_IP="10.96.0.1"

# CA, apiserver serving cert and service-account key pair; generated once.
ensure_pki() {
  [[ -s "${PKI_DIR}/sa.pub" && -s "${PKI_DIR}/tokens.csv" ]] && return
  command -v openssl >/dev/null || die "openssl is required (apt-get install openssl)"
  log "generating PKI in ${PKI_DIR}"
  rm -rf "${PKI_DIR}"; mkdir -p "${PKI_DIR}"; chmod 700 "${PKI_DIR}"
  (
    cd "${PKI_DIR}"
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=reco-kube-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -addext "subjectKeyIdentifier=hash" -out ca.crt
    cat > apiserver.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:${KUBERNETES_SERVICE_IP},DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EXT
    openssl genrsa -out apiserver.key 2048 2>/dev/null
    openssl req -new -key apiserver.key -subj "/CN=kube-apiserver" -out apiserver.csr
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -sha256 -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    # static tokens: token,user,uid,"group1,group2"
    {
      echo "$(openssl rand -hex 24),admin,uid-admin,\"system:masters\""
      echo "$(openssl rand -hex 24),system:kube-controller-manager,uid-kcm"
      echo "$(openssl rand -hex 24),system:kube-scheduler,uid-scheduler"
      echo "$(openssl rand -hex 24),kwok-controller,uid-kwok,\"system:masters\""
    } > tokens.csv.tmp
    chmod 600 ./*.key tokens.csv.tmp
    mv tokens.csv.tmp tokens.csv
  )
}

token_for() { awk -F, -v u="$1" '$2 == u {print $1}' "${PKI_DIR}/tokens.csv"; }

write_kubeconfig() { # <file> <user> <token>
  local ca_data tmp="$1.tmp"
  ca_data="$(base64 -w0 < "${PKI_DIR}/ca.crt")"
  cat > "${tmp}" <<EOF2
apiVersion: v1
kind: Config
clusters:
- name: reco-local
  cluster:
    server: ${API_URL}
    certificate-authority-data: ${ca_data}
users:
- name: $2
  user:
    token: $3
contexts:
- name: reco-local
  context:
    cluster: reco-local
    user: $2
    namespace: default
current-context: reco-local
EOF2
  chmod 600 "${tmp}"; mv -f "${tmp}" "$1"
}

ensure_kubeconfigs() {
  mkdir -p "${STACK_DIR}/conf"
  write_kubeconfig "${KUBECONFIG_FILE}" admin "$(token_for admin)"
  write_kubeconfig "${STACK_DIR}/conf/controller-manager.kubeconfig" system:kube-controller-manager "$(token_for system:kube-controller-manager)"
  write_kubeconfig "${STACK_DIR}/conf/scheduler.kubeconfig" system:kube-scheduler "$(token_for system:kube-scheduler)"
  write_kubeconfig "${STACK_DIR}/conf/kwok.kubeconfig" kwok-controller "$(token_for kwok-controller)"
  # Beside the kubeconfigs, so that kwok's command line names only the stack directory: a
  # checkout sharing the stack (a git worktree, RECO_STACK_DIR) then finds the running kwok
  # (component_pid) instead of starting a second one.
  install -m 644 "${KUBE_SRC}/kwok.yaml" "${STACK_DIR}/conf/kwok.yaml"
}

# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------

component_args() { # <component>: prints one argument per line
  case "$1" in
    etcd) printf '%s\n' \
      --name=reco --data-dir="${STACK_DIR}/etcd" \
      --listen-client-urls="${ETCD_URL}" --advertise-client-urls="${ETCD_URL}" \
      --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
      --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
      --initial-cluster="reco=http://127.0.0.1:${ETCD_PEER_PORT}" \
      --auto-compaction-retention=1 --quota-backend-bytes=4294967296 --log-level=warn ;;
    kube-apiserver) printf '%s\n' \
      --etcd-servers="${ETCD_URL}" \
      --bind-address=127.0.0.1 --secure-port="${KUBE_PORT}" --advertise-address=127.0.0.1 \
      --endpoint-reconciler-type=none \
      --tls-cert-file="${PKI_DIR}/apiserver.crt" --tls-private-key-file="${PKI_DIR}/apiserver.key" \
      --client-ca-file="${PKI_DIR}/ca.crt" \
      --token-auth-file="${PKI_DIR}/tokens.csv" \
      --authorization-mode=Node,RBAC \
      --service-cluster-ip-range="${SERVICE_CIDR}" \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="${PKI_DIR}/sa.pub" \
      --service-account-signing-key-file="${PKI_DIR}/sa.key" \
      --allow-privileged=true --cert-dir="${RUN_DIR}/apiserver-certs" ;;
    kube-controller-manager) printf '%s\n' \
      --kubeconfig="${STACK_DIR}/conf/controller-manager.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port="${KCM_PORT}" --cert-dir="${RUN_DIR}/kcm-certs" \
      --flex-volume-plugin-dir="${RUN_DIR}/flexvolume" \
      --service-account-private-key-file="${PKI_DIR}/sa.key" \
      --root-ca-file="${PKI_DIR}/ca.crt" \
      --cluster-signing-cert-file="${PKI_DIR}/ca.crt" --cluster-signing-key-file="${PKI_DIR}/ca.key" \
      --service-cluster-ip-range="${SERVICE_CIDR}" \
      --use-service-account-credentials=true --controllers='*' --leader-elect=false ;;
    kube-scheduler) printf '%s\n' \
      --kubeconfig="${STACK_DIR}/conf/scheduler.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port="${SCHEDULER_PORT}" --cert-dir="${RUN_DIR}/scheduler-certs" \
      --leader-elect=false ;;
    kwok) printf '%s\n' \
      --kubeconfig="${STACK_DIR}/conf/kwok.kubeconfig" \
      --config="${STACK_DIR}/conf/kwok.yaml" \
      --manage-all-nodes=false \
      --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
      --node-lease-duration-seconds=40 --node-ip=127.0.0.1 ;;
    *) die "unknown component $1" ;;
  esac
}

component_port() { # <component>: the port it listens on, if any
  case "$1" in
    etcd) echo "${ETCD_PORT}" ;;
    kube-apiserver) echo "${KUBE_PORT}" ;;
    kube-controller-manager) echo "${KCM_PORT}" ;;
    kube-scheduler) echo "${SCHEDULER_PORT}" ;;
  esac
}

pid_file() { echo "${RUN_DIR}/$1.pid"; }
log_file() { echo "${LOG_DIR}/$1.log"; }

# True while the process exists and is not a zombie (orphans are reaped by
# init, which can take a second or more).
pid_alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ -n "${stat}" && "${stat:0:1}" != Z ]]
}

# The exact command line (NUL-separated, as in /proc/PID/cmdline) of a component
# of this stack; a process is ours only if its cmdline is exactly this.
component_cmdline() {
  printf '%s\0' "${BIN_DIR}/$1"
  component_args "$1" | tr '\n' '\0'
}

cmdline_matches() { # <pid> <component>
  cmp -s "/proc/$1/cmdline" <(component_cmdline "$2") 2>/dev/null
}

# Prints the pid if the component runs. Trusts the pid file when it names a
# live process with our exact command line; otherwise looks for such a process
# (pid file lost or overwritten) and records it.
component_pid() {
  local c="$1" pid f p; f="$(pid_file "$1")"
  pid="$(cat "${f}" 2>/dev/null || true)"
  if [[ "${pid}" =~ ^[0-9]+$ ]] && pid_alive "${pid}" && cmdline_matches "${pid}" "${c}"; then
    echo "${pid}"; return 0
  fi
  for p in /proc/[0-9]*; do
    p="${p#/proc/}"
    [[ "$(readlink "/proc/${p}/exe" 2>/dev/null)" == "${BIN_DIR}/${c}" ]] || continue
    if pid_alive "${p}" && cmdline_matches "${p}" "${c}"; then
      [[ -d "${RUN_DIR}" ]] && echo "${p}" > "${f}"
      echo "${p}"; return 0
    fi
  done
  return 1
}

# Serialises up/down (and builds) between concurrent callers, e.g. several
# test sessions sharing one stack.
LOCK_FDS=()
take_lock() { # <lock file> <timeout seconds>; held until this script exits
  local fd
  mkdir -p "$(dirname "$1")"
  exec {fd}>"$1"
  LOCK_FDS+=("${fd}")
  flock -w "$2" "${fd}" || die "could not lock $1 within $2s (another scripts/kube.sh is running)"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_component() {
  local c="$1" pid port args=()
  if pid="$(component_pid "${c}")"; then log "${c}: already running (pid ${pid})"; return; fi
  port="$(component_port "${c}")"
  if [[ -n "${port}" ]] && port_in_use "${port}"; then
    die "${c}: 127.0.0.1:${port} is already in use by another process (see: ss -ltnp | grep :${port})"
  fi
  mapfile -t args < <(component_args "${c}")
  mkdir -p "${LOG_DIR}" "${RUN_DIR}"
  printf '\n==== %s starting %s\n' "$(date -u +%FT%TZ)" "${c}" >> "$(log_file "${c}")"
  # setsid: own session, so the process outlives the shell that ran `up`;
  # the lock fds are closed so that the daemon does not hold our locks.
  (
    for fd in "${LOCK_FDS[@]}"; do exec {fd}>&-; done
    exec setsid "${BIN_DIR}/${c}" "${args[@]}" < /dev/null >> "$(log_file "${c}")" 2>&1
  ) &
  echo $! > "$(pid_file "${c}")"
  log "${c}: started (pid $!), log $(log_file "${c}")"
}

stop_component() {
  local c="$1" pid i t0
  if ! pid="$(component_pid "${c}")"; then rm -f "$(pid_file "${c}")"; return; fi
  t0="$(date +%s.%N)"
  kill -TERM "${pid}" 2>/dev/null || true
  for ((i = 0; i < STOP_GRACE * 10; i++)); do
    pid_alive "${pid}" || break
    sleep 0.1
  done
  if pid_alive "${pid}"; then
    log "${c}: still running after ${STOP_GRACE}s, sending SIGKILL"
    kill -KILL "${pid}" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do pid_alive "${pid}" || break; sleep 0.1; done
  fi
  rm -f "$(pid_file "${c}")"
  log "${c}: stopped (pid ${pid}) in $(awk -v a="${t0}" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')s"
}

fail_component() { # <component> <what failed>
  local f; f="$(log_file "$1")"
  {
    echo "[kube] ERROR: $1: $2"
    echo "[kube] log file: ${f} (last 20 lines):"
    tail -n 20 "${f}" 2>/dev/null | sed 's/^/    /'
  } >&2
  exit 1
}

# wait_until <component> <description> <command...>: retries until the command
# succeeds, the component dies, or the overall `up` deadline passes.
wait_until() {
  local c="$1" what="$2"; shift 2
  until "$@" >/dev/null 2>&1; do
    component_pid "${c}" >/dev/null || fail_component "${c}" "process exited while waiting for ${what}"
    (( $(date +%s) < DEADLINE )) || fail_component "${c}" "timed out after ${UP_TIMEOUT}s waiting for ${what}"
    sleep 0.5
  done
}

kubectl_admin() { "${KUBECTL}" --kubeconfig="${KUBECONFIG_FILE}" "$@"; }
etcd_healthy() { curl -fsS --max-time 2 "${ETCD_URL}/health" | grep -q '"health":"true"'; }
apiserver_ready() { [[ "$(kubectl_admin get --raw /readyz --request-timeout=3s)" == ok ]]; }
https_healthy() { [[ "$(curl -ksS --max-time 2 "https://127.0.0.1:$1/healthz")" == ok ]]; }
default_sa_exists() { kubectl_admin -n default get serviceaccount default --request-timeout=3s; }
fake_node_names() { awk '/^  name: /{print $2}' "${KUBE_SRC}/nodes.yaml"; }

# Leases of the fake nodes outlive kwok and name a random per-process holder;
# a fresh kwok would wait for them to expire (40s), so drop them before start.
drop_stale_node_leases() {
  local names
  component_pid kwok >/dev/null && return
  mapfile -t names < <(fake_node_names)
  kubectl_admin -n kube-node-lease delete lease "${names[@]}" --ignore-not-found --request-timeout=10s >/dev/null
}

# Ready condition True and a Lease held by the running kwok, for every node.
fake_nodes_ready() {
  local n
  for n in $(fake_node_names); do
    [[ "$(kubectl_admin get node "${n}" --request-timeout=3s \
      -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]] || return 1
    kubectl_admin -n kube-node-lease get lease "${n}" --request-timeout=3s || return 1
  done
}

cmd_up() {
  local start
  command -v curl >/dev/null || die "curl is required (apt-get install curl)"
  cmd_build # a no-op when cached; a cold build takes tens of minutes
  take_lock "${STACK_DIR}/.lock" 600
  start=$(date +%s)
  DEADLINE=$(( start + UP_TIMEOUT ))
  mkdir -p "${STACK_DIR}" "${LOG_DIR}" "${RUN_DIR}"
  ensure_pki
  ensure_kubeconfigs

  start_component etcd
  wait_until etcd "etcd health at ${ETCD_URL}/health" etcd_healthy
  start_component kube-apiserver
  wait_until kube-apiserver "${API_URL}/readyz" apiserver_ready
  start_component kube-controller-manager
  start_component kube-scheduler
  drop_stale_node_leases
  start_component kwok
  wait_until kube-controller-manager "healthz on :${KCM_PORT}" https_healthy "${KCM_PORT}"
  wait_until kube-scheduler "healthz on :${SCHEDULER_PORT}" https_healthy "${SCHEDULER_PORT}"
  wait_until kube-controller-manager "the default namespace and service account" default_sa_exists
  wait_until kube-apiserver "creating the fake nodes" kubectl_admin apply -f "${KUBE_SRC}/nodes.yaml"
  wait_until kwok "fake nodes (label type=kwok) to become Ready" fake_nodes_ready
  log "control plane ready in $(( $(date +%s) - start ))s: ${API_URL} (KUBECONFIG=${KUBECONFIG_FILE})"
}

cmd_down() {
  local purge=false c i
  [[ "${1:-}" == "--purge" ]] && purge=true
  local start; start=$(date +%s)
  [[ -d "${STACK_DIR}" ]] && take_lock "${STACK_DIR}/.lock" 600
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do stop_component "${COMPONENTS[i]}"; done
  if [[ "${purge}" == true && -d "${STACK_DIR}" ]]; then
    log "purging ${STACK_DIR}"
    rm -rf "${STACK_DIR}"
  fi
  log "stopped in $(( $(date +%s) - start ))s"
}

cmd_status() {
  local c pid all=0 extra
  for c in "${COMPONENTS[@]}"; do
    extra=""
    case "${c}" in
      etcd) extra=" ${ETCD_URL}" ;;
      kube-apiserver) extra=" ${API_URL}" ;;
    esac
    if pid="$(component_pid "${c}")"; then
      printf '%-24s running  pid=%s%s\n' "${c}" "${pid}" "${extra}"
    else
      printf '%-24s stopped\n' "${c}"; all=1
    fi
  done
  if [[ "${all}" == 0 ]]; then
    printf '%-24s %s\n' "apiserver /readyz" "$(apiserver_ready && echo ok || echo NOT-READY)"
  fi
  return "${all}"
}

cmd_env() {
  printf 'export KUBECONFIG=%q\n' "${KUBECONFIG_FILE}"
  printf 'export RECO_KUBECTL=%q\n' "${KUBECTL}"
}

main() {
  local cmd="${1:-}"; shift || true
  case "${cmd}" in
    build) cmd_build "$@" ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    env) cmd_env "$@" ;;
    *) echo "usage: $0 build|up|down [--purge]|status|env" >&2; exit 2 ;;
  esac
}

main "$@"
