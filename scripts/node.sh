#!/usr/bin/env bash
# scripts/node.sh - a real Kubernetes node for the local control plane (scripts/kube.sh).
#
# containerd (Debian's, CRI enabled) + runc, a kubelet and kube-proxy built from the same
# k8s.io/kubernetes version as the control plane, Debian's CNI plugins (bridge, host-local,
# loopback, portmap) and CoreDNS (built through the Go module proxy), all in a network
# namespace of their own: the node's interfaces, routes and iptables rules (kube-proxy's) live
# there, never in the machine's. The node registers with the running kube-apiserver, which it
# reaches through a Unix socket (the apiserver listens on the machine's loopback only).
# kwok keeps faking its own nodes: this one is labelled reco.dev/node=real and tainted
# reco.dev/node=real:NoSchedule, so only pods that ask for it land here.
#
# Usage: scripts/node.sh install | build | up | down | status | load [image...] | env | ctr ARGS...
#   install Debian's containerd, runc, CNI plugins, iptables, socat (only what is missing)
#   build   build kubelet, kube-proxy (next to the control plane's binaries) and CoreDNS
#   up      build if needed, start the node, load the images, wait until the Node is Ready
#   down    stop the node: its pods, kubelet, containerd; delete the Node object and the netns
#   status  one line per component; exit 0 only if all run and the Node is Ready
#   load    load images from the local Docker engine (scripts/docker.sh) into the node's
#           containerd (default: the four services and the local kafka/redis/versitygw)
#   env     print NODE_NAME, NODE_NETNS, NODE_CONTAINERD (the CRI socket) for tests
#   ctr     `ctr -n k8s.io` on the node's containerd
#
# Environment:
#   RECO_CACHE_DIR  (~/.cache/reco)   RECO_STACK_DIR (<repo>/.stack) -> node/
#   RECO_NODE_NAME  (reco-node)       RECO_NODE_UP_TIMEOUT (180 s)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
NODE_SRC="${SCRIPT_DIR}/node"
DOCKER_SH="${SCRIPT_DIR}/docker.sh"

mod_version() { # <go.mod> <module path>
  awk -v m="$2" '($1 == m && $2 ~ /^v/) {print $2; exit} ($1 == "require" && $2 == m) {print $3; exit}' "$1"
}
K8S_VERSION="$(mod_version "${SCRIPT_DIR}/kube/build-k8s/go.mod" k8s.io/kubernetes)"
NODE_K8S_VERSION="$(mod_version "${NODE_SRC}/build-node/go.mod" k8s.io/kubernetes)"
COREDNS_VERSION="$(mod_version "${NODE_SRC}/build-coredns/go.mod" github.com/coredns/coredns)"
PAUSE_VERSION=3.10.2 # k8s.io/kubernetes build/pause (the TAG of its Makefile)

CACHE_DIR="$(realpath -m "${RECO_CACHE_DIR:-${HOME}/.cache/reco}")"
BIN_DIR="${CACHE_DIR}/kube/${K8S_VERSION}/bin" # the control plane's: kubectl is there
KUBECTL="${BIN_DIR}/kubectl"
STATE="$(realpath -m "${RECO_STACK_DIR:-${REPO_ROOT}/.stack}")/node"
KUBE_STATE="$(dirname "${STATE}")/kube"
RUN="${STATE}/run"
LOGS="${STATE}/logs"
CONF="${STATE}/conf"
PKI="${STATE}/pki"

NODE_NAME="${RECO_NODE_NAME:-reco-node}"
UP_TIMEOUT="${RECO_NODE_UP_TIMEOUT:-180}"
# One network namespace per state directory: two checkouts' nodes never share one.
NETNS="reco-node-$(printf '%s' "${STATE}" | sha256sum | cut -c1-8)"
# Addresses inside the node's namespace only (nothing routes them outside it).
NODE_IP=10.245.0.2       # the node's InternalIP, on an interface of its namespace
POD_SUBNET=10.244.0.0/24 # the CNI bridge cni0; its gateway is the node's side
POD_GATEWAY=10.244.0.1
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16 # scripts/kube.sh's --service-cluster-ip-range
DNS_IP=10.96.0.10
CONTAINERD_SOCK="${RUN}/containerd.sock"
API_SOCK="${RUN}/apiserver.sock"
PAUSE_IMAGE="reco-local/pause:${PAUSE_VERSION}"
CGROUP_ROOT=reco-node
NODE_COMPONENTS=(containerd kubelet kube-proxy coredns api-forward)
# The images the overlays run, loaded by default (scripts/docker.sh image names).
DEFAULT_IMAGES=(api controller trainer worker kafka redis versitygw)

log() { printf '[node] %s\n' "$*" >&2; }
die() { printf '[node] ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------

go_build() { # <wrapper dir> <output> <ldflags> <package>
  local start
  start=$(date +%s)
  log "go build $4 -> $2"
  (cd "$1" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
    go build -trimpath -ldflags "$3" -o "$2.tmp" "$4")
  mv -f "$2.tmp" "$2"
  log "built $(basename "$2") in $(($(date +%s) - start))s"
}

k8s_ldflags() {
  local v="${K8S_VERSION#v}" pkg flags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=${v%%.*}"
    flags+=" -X ${pkg}.gitMinor=$(cut -d. -f2 <<<"${v}") -X ${pkg}.gitTreeState=clean"
    flags+=" -X ${pkg}.gitCommit=go-module-proxy"
  done
  echo "${flags}"
}

stamp_of() { cat "$1/go.mod" "$1/go.sum" "$1"/*.go | sha256sum | cut -c1-16; }

built() { # <stamp file> <stamp> <binary...>
  local f="$1" s="$2" b
  shift 2
  for b in "$@"; do [[ -x "${b}" ]] || return 1; done
  [[ "$(cat "${f}" 2>/dev/null)" == "${s}" ]]
}

pause_bin() { printf '%s/node/pause-%s' "${CACHE_DIR}" "${PAUSE_VERSION}"; }

NODE_PACKAGES=(containerd runc containernetworking-plugins iptables socat iproute2 openssl curl)

cmd_install() {
  local missing=() p
  for p in "${NODE_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q "ok installed" || missing+=("${p}")
  done
  ((${#missing[@]})) || return 0
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

cmd_build() {
  local stamp b
  have go || die "no Go toolchain on PATH"
  [[ "${NODE_K8S_VERSION}" == "${K8S_VERSION}" ]] ||
    die "scripts/node/build-node pins k8s.io/kubernetes ${NODE_K8S_VERSION}, the control plane ${K8S_VERSION}"
  mkdir -p "${BIN_DIR}" "${CACHE_DIR}/node"
  local build_lock
  exec {build_lock}>"${BIN_DIR}/../.node-build.lock"
  flock -w 7200 "${build_lock}" || die "another scripts/node.sh build holds the lock"
  stamp="$(stamp_of "${NODE_SRC}/build-node")"
  if built "${BIN_DIR}/.stamp-node" "${stamp}" "${BIN_DIR}/kubelet" "${BIN_DIR}/kube-proxy"; then
    log "kubelet, kube-proxy ${K8S_VERSION}: cached"
  else
    for b in kubelet kube-proxy; do
      go_build "${NODE_SRC}/build-node" "${BIN_DIR}/${b}" "$(k8s_ldflags)" "k8s.io/kubernetes/cmd/${b}"
    done
    echo "${stamp}" >"${BIN_DIR}/.stamp-node"
  fi
  stamp="$(stamp_of "${NODE_SRC}/build-coredns")"
  if built "${BIN_DIR}/.stamp-coredns" "${stamp}" "${BIN_DIR}/coredns"; then
    log "coredns ${COREDNS_VERSION}: cached"
  else
    go_build "${NODE_SRC}/build-coredns" "${BIN_DIR}/coredns" \
      "-s -w -X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}" .
    echo "${stamp}" >"${BIN_DIR}/.stamp-coredns"
  fi
  # The pause container: k8s.io/kubernetes' own pause.c (its module holds build/), static.
  if [[ ! -x "$(pause_bin)" ]]; then
    local src
    src="$(cd "${NODE_SRC}/build-node" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
    have gcc || die "gcc is required for the pause binary"
    gcc -Os -static -DVERSION="${PAUSE_VERSION}" -o "$(pause_bin).tmp" "${src}/build/pause/linux/pause.c"
    strip "$(pause_bin).tmp"
    mv -f "$(pause_bin).tmp" "$(pause_bin)"
  fi
  exec {build_lock}>&- # released: the node's processes must not inherit it
  log "node binaries ready in ${BIN_DIR}"
}

# ---------------------------------------------------------------------------
# configuration: certificates, kubeconfigs, containerd, CNI, kubelet, kube-proxy, CoreDNS
# ---------------------------------------------------------------------------

kubectl_admin() { "${KUBECTL}" --kubeconfig="${KUBE_STATE}/kubeconfig" --request-timeout=15s "$@"; }
api_port() { sed -n 's#.*server: https://127.0.0.1:\([0-9]*\).*#\1#p' "${KUBE_STATE}/kubeconfig" | head -1; }

# A client certificate signed by the control plane's CA (scripts/kube.sh's PKI):
# the apiserver's --client-ca-file authenticates it as CN (user) / O (group).
client_cert() { # <name> <CN> [O]
  local name="$1" subj="/CN=$2"
  [[ -s "${PKI}/${name}.crt" ]] && return
  [[ -n "${3:-}" ]] && subj="/O=$3${subj}"
  openssl genrsa -out "${PKI}/${name}.key" 2048 2>/dev/null
  openssl req -new -key "${PKI}/${name}.key" -subj "${subj}" -out "${PKI}/${name}.csr" 2>/dev/null
  openssl x509 -req -in "${PKI}/${name}.csr" -CA "${KUBE_STATE}/pki/ca.crt" \
    -CAkey "${KUBE_STATE}/pki/ca.key" -CAcreateserial -days 3650 -sha256 \
    -extfile <(printf 'extendedKeyUsage=clientAuth\n') -out "${PKI}/${name}.crt" 2>/dev/null
  chmod 600 "${PKI}/${name}.key"
}

# Inside the node's namespace the apiserver is at the same address (api-forward).
cert_kubeconfig() { # <name>
  cat >"${CONF}/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: reco-local
  cluster: {server: "https://127.0.0.1:$(api_port)", certificate-authority: "${KUBE_STATE}/pki/ca.crt"}
users:
- name: $1
  user: {client-certificate: "${PKI}/$1.crt", client-key: "${PKI}/$1.key"}
contexts:
- name: reco-local
  context: {cluster: reco-local, user: $1}
current-context: reco-local
EOF
}

write_config() {
  mkdir -p "${RUN}" "${LOGS}" "${CONF}" "${PKI}" "${STATE}/cni/net.d" "${STATE}/sysctl"
  chmod 700 "${PKI}"
  client_cert kubelet "system:node:${NODE_NAME}" system:nodes
  client_cert kube-proxy system:kube-proxy
  client_cert coredns reco-node:coredns
  local c
  for c in kubelet kube-proxy coredns; do cert_kubeconfig "${c}"; done
  : >"${CONF}/resolv.conf" # the node has no upstream resolver: pods get the cluster DNS only

  cat >"${CONF}/containerd.toml" <<EOF
version = 2
root = "${STATE}/containerd/root"
state = "${STATE}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "${CONTAINERD_SOCK}"
[ttrpc]
  address = "${RUN}/containerd.ttrpc.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "${STATE}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  enable_selinux = false
  # Lowering an oom_score_adj needs CAP_SYS_RESOURCE, which these machines do not grant even
  # to root: sandboxes (-998) and Guaranteed pods get containerd's own score at the lowest.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${STATE}/cni/net.d"
EOF

  cat >"${STATE}/cni/net.d/10-reco.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "reco-pods",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "${STATE}/cni/ipam",
              "ranges": [[{"subnet": "${POD_SUBNET}", "gateway": "${POD_GATEWAY}"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  cat >"${CONF}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
cgroupDriver: cgroupfs      # no systemd on these machines
cgroupRoot: /${CGROUP_ROOT} # every pod cgroup under one subtree of the node's own
failCgroupV1: false         # these machines mount cgroup v1 controllers (hybrid layout)
failSwapOn: false
# The kernel tunables the kubelet wants are shown to it (bind mounts in its mount namespace),
# never written: they are the machine's, not the node's.
protectKernelDefaults: true
clusterDNS: ["${DNS_IP}"]
clusterDomain: cluster.local
resolvConf: ${CONF}/resolv.conf
podLogsDir: ${STATE}/pod-logs
staticPodPath: ""
address: ${NODE_IP}
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: ${KUBE_STATE}/pki/ca.crt}
authorization: {mode: AlwaysAllow} # only holders of a certificate of the cluster's CA get in
registerWithTaints:
  - {key: reco.dev/node, value: real, effect: NoSchedule}
# Images come only from \`scripts/node.sh load\`: nothing could pull them again.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
serializeImagePulls: false
shutdownGracePeriod: 0s
EOF

  cat >"${CONF}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: ${CONF}/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: ${NODE_NAME}
clusterCIDR: ${CLUSTER_CIDR}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# conntrack limits are the machine's (only the initial namespace may set them): left alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF

  cat >"${CONF}/Corefile" <<EOF
.:53 {
    bind ${NODE_IP}
    errors
    health 127.0.0.1:8080
    ready 127.0.0.1:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig ${CONF}/coredns.kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
    loadbalance
}
EOF
}

# Cluster objects of the node: CoreDNS's read access, the kube-dns Service, and the endpoints
# that send the cluster's Services `kubernetes` and `kube-dns` into the node's namespace.
apply_cluster_objects() {
  local port
  port="$(api_port)"
  kubectl_admin apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "reco-node:coredns"}
rules:
  # The kubernetes plugin answers from Services, EndpointSlices, Pods and Namespaces.
  - apiGroups: [""]
    resources: [services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "reco-node:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "reco-node:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "reco-node:coredns"}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  clusterIP: ${DNS_IP}
  ports:
    - {name: dns, port: 53, protocol: UDP, targetPort: 53}
    - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-${NODE_NAME}
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: reco-node}
addressType: IPv4
endpoints: [{addresses: ["${NODE_IP}"], conditions: {ready: true}, nodeName: ${NODE_NAME}}]
ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
# The apiserver runs with --endpoint-reconciler-type=none: pods reach it through this slice
# (the node's api-forward listens on the node's address).
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-${NODE_NAME}
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes, endpointslice.kubernetes.io/managed-by: reco-node}
addressType: IPv4
endpoints: [{addresses: ["${NODE_IP}"], conditions: {ready: true}}]
ports: [{name: https, port: ${port}, protocol: TCP}]
EOF
}

# ---------------------------------------------------------------------------
# processes. The node's own processes run under `_init`, inside the node's network namespace
# and a mount namespace of their own; api-forward's host side runs beside the apiserver.
# ---------------------------------------------------------------------------

pid_of() { # <component>: prints the pid if it runs
  local pid
  pid="$(cat "${RUN}/$1.pid" 2>/dev/null)" || return 1
  [[ "${pid}" =~ ^[0-9]+$ ]] && kill -0 "${pid}" 2>/dev/null && echo "${pid}"
}

in_node() { ip netns exec "${NETNS}" "$@"; }

setup_netns() {
  ip netns list 2>/dev/null | grep -qw "${NETNS}" || ip netns add "${NETNS}"
  in_node ip link set lo up
  if ! in_node ip link show node0 >/dev/null 2>&1; then
    # A veth pair with both ends inside (this kernel has no dummy interfaces): an interface
    # with a carrier for the node's address.
    in_node ip link add node0 type veth peer name node0-peer
    in_node ip addr add "${NODE_IP}/24" dev node0
    in_node ip link set node0-peer up
    in_node ip link set node0 up
    # Services' virtual IPs need a route before kube-proxy's DNAT applies; nothing leaves.
    in_node ip route add default dev node0
  fi
  # Replies of a pod to a pod on the same bridge must cross conntrack (Service DNAT undone).
  in_node sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.ipv4.ip_forward=1
}

# The pod cgroups' parent, in every cgroup v1 hierarchy, named ones included (cpuset needs its CPUs and memory
# nodes copied from the root before anything can join it).
setup_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/; do
    [[ -e "${d}cgroup.procs" && "${d}" != */unified/ ]] || continue
    mkdir -p "${d}${CGROUP_ROOT}"
  done
  if [[ -d /sys/fs/cgroup/cpuset/${CGROUP_ROOT} ]]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/${CGROUP_ROOT}/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/${CGROUP_ROOT}/cpuset.mems"
  fi
}

remove_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/"${CGROUP_ROOT}"; do
    [[ -d "${d}" ]] && find "${d}" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

spawn() { # <component> <command...>: in the background, output to its log
  local c="$1"
  shift
  printf '\n==== %s starting %s\n' "$(date -u +%FT%TZ)" "${c}" >>"${LOGS}/${c}.log"
  "$@" </dev/null >>"${LOGS}/${c}.log" 2>&1 &
  echo $! >"${RUN}/${c}.pid"
}

wait_for() { # <seconds> <what> <command...>
  local deadline=$((SECONDS + $1)) what="$2"
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# Kernel tunables the kubelet checks (protectKernelDefaults): bind-mounted files holding the
# values it expects, in this mount namespace only. The machine's stay as they are.
show_kernel_tunables() {
  local entry key value
  for entry in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
    kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
    key="${entry%=*}" value="${entry#*=}"
    [[ "$(cat "/proc/sys/${key}")" == "${value}" ]] && continue
    printf '%s\n' "${value}" >"${STATE}/sysctl/${key//\//.}"
    mount --bind "${STATE}/sysctl/${key//\//.}" "/proc/sys/${key}"
  done
}

# A sysfs of the node's network namespace (its interfaces under /sys/class/net), with the
# machine's cgroup hierarchies kept at /sys/fs/cgroup (runc and the kubelet need them), as a
# container runtime gives a container. In this mount namespace only (propagation: slave).
own_sysfs() {
  local hold="${RUN}/cgroup-hold"
  mkdir -p "${hold}"
  mount --rbind /sys/fs/cgroup "${hold}"
  umount -l /sys
  mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
  mount --move "${hold}" /sys/fs/cgroup
}

# Runs as the node's init, inside its namespaces: starts the node's processes and, on SIGTERM,
# stops them (pods first).
node_init() {
  local c pid
  own_sysfs
  show_kernel_tunables
  trap 'node_stop; exit 0' TERM INT
  spawn containerd containerd --config "${CONF}/containerd.toml"
  wait_for 60 containerd ctr --address "${CONTAINERD_SOCK}" version || { log "containerd did not start"; exit 1; }
  ctr_node images import --no-unpack=false "${CACHE_DIR}/node/pause-${PAUSE_VERSION}.tar" >/dev/null
  spawn api-forward socat "TCP-LISTEN:$(api_port),fork,reuseaddr" "UNIX-CONNECT:${API_SOCK}"
  spawn kubelet "${BIN_DIR}/kubelet" --config="${CONF}/kubelet.yaml" \
    --kubeconfig="${CONF}/kubelet.kubeconfig" --hostname-override="${NODE_NAME}" \
    --node-ip="${NODE_IP}" --root-dir="${STATE}/kubelet" --cert-dir="${PKI}/kubelet-serving" \
    --node-labels="reco.dev/node=real,reco.dev/pool=training" --v=1
  spawn kube-proxy "${BIN_DIR}/kube-proxy" --config="${CONF}/kube-proxy.yaml" --v=1
  spawn coredns "${BIN_DIR}/coredns" -conf "${CONF}/Corefile"
  echo ready >"${RUN}/init.ready"
  while true; do
    for c in containerd kubelet kube-proxy coredns api-forward; do
      pid="$(cat "${RUN}/${c}.pid")"
      kill -0 "${pid}" 2>/dev/null || log "${c} (pid ${pid}) exited; see ${LOGS}/${c}.log"
    done
    sleep 5 &
    wait $! || true
  done
}

ctr_node() { ctr --address "${CONTAINERD_SOCK}" -n k8s.io "$@"; }

stop_pid() { # <pid> <grace seconds>
  local i
  kill -TERM "$1" 2>/dev/null || return 0
  for ((i = 0; i < $2 * 10; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}

# Every process of a pod (in the node's pod cgroups) and every shim of the node's containerd.
node_pod_pids() {
  find "/sys/fs/cgroup/pids/${CGROUP_ROOT}" -name cgroup.procs -exec cat {} + 2>/dev/null || true
}

shim_pids() {
  local p
  for p in /proc/[0-9]*; do
    { tr '\0' ' ' <"${p}/cmdline"; } 2>/dev/null | grep -q "containerd-shim.* -address ${CONTAINERD_SOCK}" &&
      echo "${p#/proc/}"
  done
  return 0
}

node_stop() {
  local c pid
  for c in kube-proxy coredns kubelet; do
    pid="$(cat "${RUN}/${c}.pid" 2>/dev/null)" && stop_pid "${pid}" 10
  done
  # The pods: a node going away does not wait for their grace periods.
  for pid in $(node_pod_pids); do kill -KILL "${pid}" 2>/dev/null || true; done
  for pid in $(shim_pids); do stop_pid "${pid}" 5; done
  for c in containerd api-forward; do
    pid="$(cat "${RUN}/${c}.pid" 2>/dev/null)" && stop_pid "${pid}" 10
  done
  rm -f "${RUN}/init.ready"
}

apiserver_ready() {
  [[ -s "${KUBE_STATE}/kubeconfig" ]] && [[ "$(kubectl_admin get --raw /readyz 2>/dev/null)" == ok ]]
}

node_ready() {
  [[ "$(kubectl_admin get node "${NODE_NAME}" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

cmd_up() {
  local start
  start=$(date +%s)
  cmd_install
  apiserver_ready || die "the control plane's kube-apiserver does not answer (scripts/kube.sh up)"
  cmd_build
  mkdir -p "${STATE}"
  exec {lock}>"${STATE}/.lock"
  flock -w 600 "${lock}" || die "another scripts/node.sh holds ${STATE}/.lock"
  if pid_of init >/dev/null && [[ -f "${RUN}/init.ready" ]] && node_ready; then
    log "already running (${NODE_NAME}, netns ${NETNS})"
    return 0
  fi
  [[ -f "${CACHE_DIR}/node/pause-${PAUSE_VERSION}.tar" ]] || pause_image
  write_config
  setup_netns
  setup_cgroups
  apply_cluster_objects
  if ! pid_of api-forward-host >/dev/null; then
    rm -f "${API_SOCK}"
    setsid socat "UNIX-LISTEN:${API_SOCK},fork,mode=600" "TCP:127.0.0.1:$(api_port)" \
      </dev/null >>"${LOGS}/api-forward-host.log" 2>&1 {lock}>&- &
    echo $! >"${RUN}/api-forward-host.pid"
  fi
  if ! pid_of init >/dev/null; then
    rm -f "${RUN}/init.ready"
    setsid nsenter --net="/run/netns/${NETNS}" unshare --mount --propagation slave \
      "${BASH_SOURCE[0]}" _init </dev/null >>"${LOGS}/init.log" 2>&1 {lock}>&- &
    echo $! >"${RUN}/init.pid"
  fi
  wait_for 60 "node init" test -f "${RUN}/init.ready" || fail "the node's processes did not start" init containerd
  cmd_load
  wait_for "${UP_TIMEOUT}" "Node ${NODE_NAME} Ready" node_ready || fail "Node ${NODE_NAME} not Ready" kubelet
  log "node ${NODE_NAME} Ready in $(($(date +%s) - start))s (netns ${NETNS}, logs ${LOGS})"
}

fail() { # <message> <component whose log to show...>
  local m="$1" c
  shift
  printf '[node] ERROR: %s\n' "${m}" >&2
  for c in "$@"; do
    printf '[node] %s (last 15 lines):\n' "${LOGS}/${c}.log" >&2
    tail -n 15 "${LOGS}/${c}.log" 2>/dev/null | sed 's/^/    /' >&2
  done
  exit 1
}

# The pause image: the static pause binary as a one-file image (docker import), saved once.
pause_image() {
  local tmp
  tmp="$(mktemp -d)"
  mkdir -p "${tmp}/rootfs"
  cp "$(pause_bin)" "${tmp}/rootfs/pause"
  tar -C "${tmp}/rootfs" -cf "${tmp}/rootfs.tar" pause
  "${DOCKER_SH}" docker import --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' \
    "${tmp}/rootfs.tar" "${PAUSE_IMAGE}" >/dev/null
  "${DOCKER_SH}" docker save -o "${CACHE_DIR}/node/pause-${PAUSE_VERSION}.tar" "${PAUSE_IMAGE}"
  rm -rf "${tmp}"
}

image_ref() { # <scripts/docker.sh image name> -> its reference (as scripts/docker.sh names it)
  local var
  case "$1" in
    api | controller | trainer | worker)
      echo "reco-$1:$(sed -n 's/^version = "\(.*\)"$/\1/p' "${REPO_ROOT}/services/$1/pyproject.toml")"
      return ;;
    kafka) var=RECO_KAFKA_IMAGE ;;
    redis) var=RECO_REDIS_IMAGE ;;
    versitygw) var=RECO_S3_IMAGE ;;
    *) die "unknown image '$1' (expected: ${DEFAULT_IMAGES[*]})" ;;
  esac
  "${DOCKER_SH}" env | sed -n "s/^export ${var}=//p"
}

# Images from the local Docker engine into the node's containerd, each only if its image ID
# changed since it was loaded (recorded as a label).
cmd_load() {
  local images=("$@") name ref full id
  ((${#images[@]})) || images=("${DEFAULT_IMAGES[@]}")
  for name in "${images[@]}"; do
    ref="$(image_ref "${name}")"
    id="$("${DOCKER_SH}" docker image inspect --format '{{.Id}}' "${ref}")" ||
      die "image ${ref} is not built (make images)"
    full="${ref}"
    [[ "${full}" == */* ]] || full="library/${full}"
    full="docker.io/${full}" # as containerd names it (the kubelet asks for the same)
    if ctr_node images ls "name==${full}" 2>/dev/null | grep -q "reco.docker-id=${id}"; then
      continue
    fi
    log "load ${ref}"
    "${DOCKER_SH}" docker save "${ref}" | ctr_node images import - >/dev/null
    ctr_node images label "${full}" "reco.docker-id=${id}" >/dev/null
  done
}

cmd_down() {
  local pid start
  start=$(date +%s)
  mkdir -p "${STATE}"
  exec {lock}>"${STATE}/.lock"
  flock -w 600 "${lock}" || die "another scripts/node.sh holds ${STATE}/.lock"
  if pid="$(pid_of init)"; then stop_pid "${pid}" 60; fi
  node_stop # whatever the init left (or when it died)
  if pid="$(pid_of api-forward-host)"; then stop_pid "${pid}" 5; fi
  if apiserver_ready; then
    kubectl_admin delete node "${NODE_NAME}" --ignore-not-found --wait=false >/dev/null || true
    kubectl_admin -n default delete endpointslice "kubernetes-${NODE_NAME}" --ignore-not-found >/dev/null || true
    kubectl_admin -n kube-system delete endpointslice "kube-dns-${NODE_NAME}" --ignore-not-found >/dev/null || true
  fi
  ip netns list 2>/dev/null | grep -qw "${NETNS}" && ip netns delete "${NETNS}"
  remove_cgroups
  rm -f "${RUN}"/*.pid
  log "stopped in $(($(date +%s) - start))s"
}

cmd_status() {
  local c pid rc=0
  for c in init api-forward-host "${NODE_COMPONENTS[@]}"; do
    if pid="$(pid_of "${c}")"; then
      printf '%-18s running  pid=%s\n' "${c}" "${pid}"
    else
      printf '%-18s stopped\n' "${c}"
      rc=1
    fi
  done
  if node_ready; then printf '%-18s Ready\n' "node ${NODE_NAME}"; else printf '%-18s NOT-READY\n' "node ${NODE_NAME}"; rc=1; fi
  return "${rc}"
}

cmd_env() {
  printf 'export RECO_NODE_NAME=%q\n' "${NODE_NAME}"
  printf 'export RECO_NODE_NETNS=%q\n' "${NETNS}"
  printf 'export RECO_NODE_CONTAINERD=%q\n' "${CONTAINERD_SOCK}"
  printf 'export RECO_NODE_STATE=%q\n' "${STATE}"
}

main() {
  local cmd="${1:-}"
  shift || true
  case "${cmd}" in
    install) cmd_install "$@" ;;
    build) cmd_build "$@" ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    load) cmd_load "$@" ;;
    env) cmd_env "$@" ;;
    ctr) ctr_node "$@" ;;
    _init) node_init ;;
    *) echo "usage: $0 install|build|up|down|status|load [image...]|env|ctr ARGS..." >&2; exit 2 ;;
  esac
}

main "$@"
