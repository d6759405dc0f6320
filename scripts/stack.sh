#!/usr/bin/env bash
# scripts/stack.sh - the local dev stack: real Kafka, Redis and an S3 server,
# run as plain background processes bound to 127.0.0.1 (no Docker, no systemd).
# Used by the tests, CI and the demo.
#
#   scripts/stack.sh install [component...]   install/build into the cache only (CI)
#   scripts/stack.sh up      [component...]   install if needed, start, wait until ready
#   scripts/stack.sh down    [component...]   SIGTERM, wait, SIGKILL after a bound
#   scripts/stack.sh restart [component...]   down + up (fault tests)
#   scripts/stack.sh status  [component...]   one line each; exit 0 only if all running
#   scripts/stack.sh logs    [component...]   last lines of each log file
#   scripts/stack.sh env                      `export RECO_...=...` lines for clients
#   scripts/stack.sh grant   <acls file>      also apply these Kafka users and ACLs (another
#                                             topic namespace, e.g. a test's prefix)
#   scripts/stack.sh cluster-up|cluster-down|cluster-status|cluster-env
#                                             an opt-in Redis Cluster (never started by `up`)
#   scripts/stack.sh kafka3-up|kafka3-down|kafka3-status|kafka3-env [node...]
#                                             the opt-in 3-node Kafka cluster (nodes 1 2 3)
#
# Components: kafka redis s3 (default: all three).
#
#   redis-cluster (opt-in, `cluster-up`): Debian's redis-server in cluster mode, 3 primaries
#          and 3 replicas on 127.0.0.1:RECO_REDIS_CLUSTER_PORT..+5 (7000-7005), created with
#          `redis-cli --cluster create --cluster-replicas 1`; no persistence (a node restarted
#          rejoins as a replica of whoever took over its slots). `cluster-up` also restarts a
#          node that is down (the fault tests kill primaries). Data and logs in
#          RECO_REDIS_CLUSTER_DIR (<stack dir>/redis-cluster/<port>/).
#
#   kafka3 (opt-in, never started by `up`) a second Kafka: three KRaft nodes, each a combined
#          broker + controller and a voter of the quorum, for replication and broker-loss tests
#          (scripts/stack/kafka/cluster.properties.tmpl: replication 3, min.insync.replicas 2,
#          no auto-created topics; one anonymous listener). Node n listens on
#          RECO_KAFKA3_PORT_BASE + 100n + 92 (clients) and + 93 (controller): 19192, 19292,
#          19392 by default; data, log and pid in $RECO_STACK_DIR/kafka3-<n>. Independent of
#          the single broker on 9092/9094 (own ports, dirs, cluster id and lock). `kafka3-up`
#          starts the nodes that do not run (after a crash too) and waits until all three are
#          in the cluster; `kafka3-env` prints its bootstrap.
#
#   kafka  Apache Kafka (KRaft, single combined broker+controller node, no Zookeeper)
#          from the official jars on Maven Central, resolved with Maven into
#          $RECO_CACHE_DIR/kafka-<version>/libs and run with `java -cp 'libs/*'`.
#          Two client listeners: SASL/SCRAM-SHA-512 on RECO_KAFKA_SASL_PORT with one
#          user per service (password `<user>-dev-secret`) and the ACLs of
#          scripts/stack/kafka/acls.txt, applied after the first start of a data dir;
#          and the anonymous development listener on RECO_KAFKA_PORT (tests, tools),
#          a super user (docs/security.md, "Kafka").
#   redis  Debian's redis-server (apt-get installed if missing), AOF persistence.
#   s3     VersityGW (`go install`ed into $RECO_CACHE_DIR/bin), posix backend on a
#          data dir, so buckets/objects survive restarts. If it cannot be built,
#          moto's server (pip, in a venv in the cache) is used instead, loudly.
#          Besides the root credentials (tests, tools), one user per service in its
#          internal IAM (secret `<user>-dev-secret`) held to the bucket policy of
#          scripts/stack/s3/policy.json: the trainer writes models/ and snapshots/,
#          the controller and the workers only read (docs/security.md).
#
# Every download (Maven repo, Go modules, the moto venv) lives in the cache, so an
# `up` after the first one never touches the network. Data, logs and pid files live
# in $RECO_STACK_DIR (default <repo>/.stack, gitignored): .stack/<component>/{data,
# <component>.log,pid}. Progress goes to stderr; `env`/`status` output goes to stdout.
#
# Settings (environment):
#   RECO_CACHE_DIR   (~/.cache/reco)      RECO_STACK_DIR (<repo>/.stack)
#   RECO_KAFKA_PORT  (9092)               RECO_KAFKA_CONTROLLER_PORT (9093)
#   RECO_KAFKA_SASL_PORT (9094)
#   RECO_REDIS_PORT  (6379)               RECO_S3_PORT (9000)
#   RECO_S3_ACCESS_KEY (recoadmin)        RECO_S3_SECRET_KEY (recoadmin-secret)
#   RECO_S3_BUCKET   (reco)               RECO_S3_REGION (us-east-1)
#   RECO_KAFKA_VERSION (4.3.1)            RECO_KAFKA_HEAP (512m)
#   RECO_KAFKA3_PORT_BASE (19000)         RECO_KAFKA3_HEAP (384m)
#   RECO_VERSITYGW_VERSION (v1.8.0)       RECO_S3_BACKEND (auto|versitygw|moto)
#   RECO_STACK_TIMEOUT (180, seconds to wait for readiness)
#   RECO_STACK_STOP_TIMEOUT (30, seconds between SIGTERM and SIGKILL)
#   RECO_STACK_LOG_LINES (50, lines shown by `logs`)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd -P)"
TEMPLATE_DIR="$SCRIPT_DIR/stack"

CACHE_DIR="${RECO_CACHE_DIR:-$HOME/.cache/reco}"
STACK_DIR="${RECO_STACK_DIR:-$REPO_ROOT/.stack}"

KAFKA_VERSION="${RECO_KAFKA_VERSION:-4.3.1}"
LOG4J_VERSION="2.25.3"
MVN_DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
KAFKA_CLUSTER_ID="cmVjby1kZXYtc3RhY2sxMA" # base64("reco-dev-stack10"): fixed on purpose
KAFKA_PORT="${RECO_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${RECO_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_SASL_PORT="${RECO_KAFKA_SASL_PORT:-9094}"
KAFKA_HEAP="${RECO_KAFKA_HEAP:-512m}"
KAFKA3_CLUSTER_ID="cmVjby1kZXYta2Fma2EzMA" # base64("reco-dev-kafka30"): fixed on purpose
KAFKA3_PORT_BASE="${RECO_KAFKA3_PORT_BASE:-19000}"
KAFKA3_HEAP="${RECO_KAFKA3_HEAP:-384m}"
KAFKA3_NODES=(1 2 3)

REDIS_PORT="${RECO_REDIS_PORT:-6379}"
CLUSTER_PORT="${RECO_REDIS_CLUSTER_PORT:-7000}" # the first of six
CLUSTER_NODE_TIMEOUT_MS="${RECO_REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}"

VERSITYGW_VERSION="${RECO_VERSITYGW_VERSION:-v1.8.0}"
MOTO_SPEC="moto[server]==5.1.*"
S3_BACKEND="${RECO_S3_BACKEND:-auto}"
S3_PORT="${RECO_S3_PORT:-9000}"
S3_ACCESS_KEY="${RECO_S3_ACCESS_KEY:-recoadmin}"
S3_SECRET_KEY="${RECO_S3_SECRET_KEY:-recoadmin-secret}"
S3_BUCKET="${RECO_S3_BUCKET:-reco}"
S3_REGION="${RECO_S3_REGION:-us-east-1}"
EMPTY_SHA256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

READY_TIMEOUT="${RECO_STACK_TIMEOUT:-180}"
STOP_TIMEOUT="${RECO_STACK_STOP_TIMEOUT:-30}"
LOG_LINES="${RECO_STACK_LOG_LINES:-50}"
ALL_COMPONENTS=(kafka redis s3)

APT_UPDATED=0

# ----------------------------------------------------------------- helpers ---

# LOG_TAG: scripts/docker.sh sources this file for its helpers and says who is speaking.
LOG_TAG="${LOG_TAG:-stack}"
say() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() {
  printf '[%s] ERROR: %s\n' "$LOG_TAG" "$*" >&2
  exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

usage() {
  sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

comp_dir() { printf '%s/%s' "$STACK_DIR" "$1"; }
comp_log() { printf '%s/%s/%s.log' "$STACK_DIR" "$1" "$1"; }
comp_pidfile() { printf '%s/%s/pid' "$STACK_DIR" "$1"; }

comp_port() {
  case "$1" in
    kafka) echo "$KAFKA_PORT" ;;
    redis) echo "$REDIS_PORT" ;;
    s3) echo "$S3_PORT" ;;
    kafka3-[123]) echo "$((KAFKA3_PORT_BASE + 100 * ${1#kafka3-} + 92))" ;;
  esac
}

# Every port a component binds (Kafka also has its controller listener).
comp_ports() {
  case "$1" in
    kafka) echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT $KAFKA_SASL_PORT" ;;
    kafka3-[123]) echo "$(comp_port "$1") $(($(comp_port "$1") + 1))" ;;
    *) comp_port "$1" ;;
  esac
}

port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Pid listening on 127.0.0.1:<port>, if `ss` can tell.
listener_pid() {
  have ss || return 0
  ss -H -ltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2
}

# A pid is one of ours if it is alive and its working directory is inside the
# component's stack dir (spawn() cd's there; redis then cd's into data/).
# That survives pid reuse and does not depend on the process title.
is_ours() {
  local pid="$1" comp="$2" cwd
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null)" || return 1
  [[ "$cwd" == "$(comp_dir "$comp")" || "$cwd" == "$(comp_dir "$comp")"/* ]]
}

# Pid of the running component, or nothing. Re-adopts a live process whose pid
# file was lost (found through its listening port).
comp_pid() {
  local comp="$1" pidfile pid=""
  pidfile="$(comp_pidfile "$comp")"
  [[ -f "$pidfile" ]] && pid="$(<"$pidfile")"
  if is_ours "$pid" "$comp"; then
    echo "$pid"
    return 0
  fi
  pid="$(listener_pid "$(comp_port "$comp")")"
  if is_ours "$pid" "$comp"; then
    echo "$pid" >"$pidfile"
    echo "$pid"
  fi
}

# Fail early, with a useful message, if a port is taken by something else.
check_ports_free() {
  local comp="$1" port pid cmd
  for port in $(comp_ports "$comp"); do
    port_open "$port" || continue
    pid="$(listener_pid "$port")"
    cmd=""
    [[ -n "$pid" ]] && cmd="$(tr '\0\n' '  ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120)"
    die "$comp: port 127.0.0.1:$port is already in use${pid:+ by pid $pid ($cmd)}; stop it or set another port (see the header of $0)"
  done
}

# Start "$@" in its own session, cwd = component dir, output appended to the log.
# `exec setsid` keeps the pid: the subshell is not a group leader, so setsid does
# not fork. fds 8/9 (the locks) are closed so a daemon never holds a lock.
spawn() {
  local comp="$1"
  shift
  local dir log
  dir="$(comp_dir "$comp")"
  log="$(comp_log "$comp")"
  # keep one previous log once it passes ~50 MB (fault tests restart a lot)
  if [[ -f "$log" && $(stat -c %s "$log") -gt 52428800 ]]; then mv -f "$log" "$log.1"; fi
  printf '\n===== %s stack.sh: starting %s =====\n' "$(date -Is)" "$comp" >>"$log"
  stat -c %s "$log" >"$dir/log.offset" # where this run's output starts
  (cd "$dir" && exec setsid "$@" >>"$log" 2>&1 </dev/null 8>&- 9>&-) &
  echo "$!" >"$(comp_pidfile "$comp")"
}

fail_component() {
  local comp="$1" why="$2" log
  log="$(comp_log "$comp")"
  {
    printf '[%s] ERROR: %s: %s\n' "$LOG_TAG" "$comp" "$why"
    printf '[%s]   log file: %s\n' "$LOG_TAG" "$log"
    printf '[%s]   last 20 lines:\n' "$LOG_TAG"
    tail -n 20 "$log" 2>/dev/null | sed 's/^/    | /'
  } >&2
  stop_component "$comp" >/dev/null 2>&1 || true
  exit 1
}

acquire_lock() { # acquire_lock [lock name]: the default stack's, or another one's
  local lock="$STACK_DIR/${1:-.lock}"
  mkdir -p "$STACK_DIR"
  exec 9>"$lock"
  flock -w 1200 9 || die "another scripts/stack.sh is still running (lock $lock)"
}

apt_install() {
  local sudo=()
  if [[ $EUID -ne 0 ]]; then
    have sudo || die "need root (or sudo) to apt-get install $*"
    sudo=(sudo)
  fi
  if [[ $APT_UPDATED -eq 0 ]]; then
    say "apt-get update"
    "${sudo[@]}" apt-get update -qq
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_tool() { # ensure_tool <command> <debian package>
  have "$1" || apt_install "$2"
}

# --------------------------------------------------------------- kafka -------

kafka_home() { printf '%s/kafka-%s' "$CACHE_DIR" "$KAFKA_VERSION"; }

ensure_java17() {
  ensure_tool java openjdk-17-jre-headless
  local major
  major="$(java -XshowSettings:properties -version 2>&1 |
    sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')"
  [[ "${major:-0}" -ge 17 ]] || die "kafka: needs Java >= 17, found '${major:-?}' ($(command -v java))"
}

kafka_install() {
  local home
  home="$(kafka_home)"
  [[ -f "$home/.installed" ]] && return 0
  ensure_java17
  ensure_tool mvn maven
  say "kafka: resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION (+ kafka-tools, log4j2 $LOG4J_VERSION) from Maven Central"
  mkdir -p "$home"
  sed -e "s/@KAFKA_VERSION@/$KAFKA_VERSION/g" -e "s/@LOG4J_VERSION@/$LOG4J_VERSION/g" \
    "$TEMPLATE_DIR/kafka/pom.xml.tmpl" >"$home/pom.xml"
  rm -rf "$home/libs.partial"
  mvn -B -q -Dstyle.color=never -f "$home/pom.xml" -Dmaven.repo.local="$CACHE_DIR/m2" \
    "$MVN_DEPENDENCY_PLUGIN:copy-dependencies" \
    -DincludeScope=runtime -DoutputDirectory="$home/libs.partial" 2>&1 |
    sed 's/\x1b\[[0-9;]*m//g' >&2 ||
    die "kafka: maven could not resolve the Kafka $KAFKA_VERSION jars (pom: $home/pom.xml)"
  rm -rf "$home/libs"
  mv "$home/libs.partial" "$home/libs"
  date -Is >"$home/.installed"
  say "kafka: $(find "$home/libs" -name '*.jar' | wc -l) jars in $home/libs"
}

kafka_java() { # kafka_java <log4j2 config> <jvm/class args...>
  local config="$1"
  shift
  java -Djava.awt.headless=true -Dlog4j2.configurationFile="$config" \
    -cp "$(kafka_home)/libs/*" "$@"
}

kafka_prepare() {
  local dir
  dir="$(comp_dir kafka)"
  mkdir -p "$dir/data"
  sed -e "s#@PORT@#$KAFKA_PORT#g" -e "s#@CONTROLLER_PORT@#$KAFKA_CONTROLLER_PORT#g" \
    -e "s#@SASL_PORT@#$KAFKA_SASL_PORT#g" \
    -e "s#@DATA_DIR@#$dir/data#g" "$TEMPLATE_DIR/kafka/server.properties.tmpl" >"$dir/server.properties"
  kafka_format kafka "$KAFKA_CLUSTER_ID"
}

# The log4j2 config next to the rendered server.properties, and the KRaft storage formatted
# once per data dir.
kafka_format() { # kafka_format <component> <cluster id>
  local comp="$1" dir
  dir="$(comp_dir "$comp")"
  cp "$TEMPLATE_DIR/kafka/log4j2.yaml" "$dir/log4j2.yaml"
  [[ -f "$dir/data/meta.properties" ]] && return 0
  say "$comp: formatting KRaft storage in $dir/data (cluster id $2)"
  kafka_java "$TEMPLATE_DIR/kafka/log4j2-tools.yaml" -Xmx256m -XX:TieredStopAtLevel=1 \
    kafka.tools.StorageTool format --ignore-formatted \
    -t "$2" -c "$dir/server.properties" >>"$(comp_log "$comp")" 2>&1 ||
    fail_component "$comp" "kafka.tools.StorageTool format failed"
}

kafka_start() {
  local dir
  dir="$(comp_dir kafka)"
  spawn kafka java -Xmx"$KAFKA_HEAP" \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.yaml" \
    -cp "$(kafka_home)/libs/*" kafka.Kafka "$dir/server.properties"
}

# The broker answers a real Kafka request: Metadata v4 (all topics) sent over
# bash's /dev/tcp, and the reply lists exactly one broker, node 1 (itself).
# Same evidence as `TopicCommand --list` without starting a second JVM.
kafka_answers() {
  [[ "$(kafka_metadata_head "$KAFKA_PORT")" == 0000000100000001 ]]
}

# The broker count and first node id of a Metadata v4 reply from 127.0.0.1:<port>, as 16 hex
# digits (empty when the broker does not answer). Reply bytes: size | correlation id = 2 |
# throttle ms | broker count | node id of the first broker.
kafka_metadata_head() { # kafka_metadata_head <port>
  local hex
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  hex="$(timeout 5 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf "\x00\x00\x00\x14\x00\x03\x00\x04\x00\x00\x00\x02\x00\x05stack\xff\xff\xff\xff\x00" >&3
    head -c 20 <&3 | od -An -v -tx1' _ "$1" 2>/dev/null | tr -d ' \n')"
  [[ "${hex:8:8}" == 00000002 ]] && echo "${hex:24:16}"
}

# Ready = port open, "Kafka Server started" logged by this run, broker answers.
kafka_ready() {
  port_open "$KAFKA_PORT" || return 1
  local log offset
  log="$(comp_log kafka)"
  offset="$(cat "$(comp_dir kafka)/log.offset" 2>/dev/null || echo 0)"
  tail -c +"$((offset + 1))" "$log" | grep -q 'Kafka Server started' || return 1
  kafka_answers
}

# The access matrix (reco_common.kafka_access, rendered to acls.txt): one SCRAM user per
# principal and its ACLs, applied by Access.java through the super-user development listener.
# Both live in the cluster metadata, so this runs once per data dir and again when acls.txt
# changes: the data dir keeps a copy of the file last applied, whose grants are deleted first.
kafka_access() { # kafka_access <acls file> [<previously applied file, whose grants go first>]
  kafka_java "$TEMPLATE_DIR/kafka/log4j2-tools.yaml" -Xmx128m -XX:TieredStopAtLevel=1 \
    "$TEMPLATE_DIR/kafka/Access.java" "127.0.0.1:$KAFKA_PORT" "$@" >>"$(comp_log kafka)" 2>&1
}

kafka_configure() {
  local file applied args
  file="$TEMPLATE_DIR/kafka/acls.txt"
  applied="$(comp_dir kafka)/data/.reco-acls-applied"
  cmp -s "$file" "$applied" && return 0
  say "kafka: SCRAM users and ACLs of $file"
  args=("$file")
  [[ -f "$applied" ]] && args+=("$applied")
  kafka_access "${args[@]}" || fail_component kafka "applying $file failed (Access.java)"
  cp "$file" "$applied"
  say "kafka: SASL/SCRAM listener 127.0.0.1:$KAFKA_SASL_PORT ready"
}

# ------------------------------------------------------- kafka3 (opt-in) -----

kafka3_voters() {
  local n voters=()
  for n in "${KAFKA3_NODES[@]}"; do voters+=("$n@127.0.0.1:$(($(comp_port "kafka3-$n") + 1))"); done
  (IFS=,; echo "${voters[*]}")
}

kafka3_prepare() { # kafka3_prepare <node>
  local comp="kafka3-$1" dir
  dir="$(comp_dir "$comp")"
  mkdir -p "$dir/data"
  sed -e "s#@NODE_ID@#$1#g" -e "s#@PORT@#$(comp_port "$comp")#g" \
    -e "s#@CONTROLLER_PORT@#$(($(comp_port "$comp") + 1))#g" -e "s#@VOTERS@#$(kafka3_voters)#g" \
    -e "s#@DATA_DIR@#$dir/data#g" "$TEMPLATE_DIR/kafka/cluster.properties.tmpl" >"$dir/server.properties"
  kafka_format "$comp" "$KAFKA3_CLUSTER_ID"
}

kafka3_start() { # kafka3_start <node>
  local comp="kafka3-$1" dir
  dir="$(comp_dir "$comp")"
  spawn "$comp" java -Xmx"$KAFKA3_HEAP" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -XX:CICompilerCount=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.yaml" \
    -cp "$(kafka_home)/libs/*" kafka.Kafka "$dir/server.properties"
}

# Ready = every node started by this run logged "Kafka Server started", and each node's
# metadata lists all three brokers.
kafka3_ready() { # kafka3_ready <node...>
  local n comp offset
  for n in "$@"; do
    comp="kafka3-$n"
    offset="$(cat "$(comp_dir "$comp")/log.offset" 2>/dev/null || echo 0)"
    tail -c +"$((offset + 1))" "$(comp_log "$comp")" | grep -q 'Kafka Server started' || return 1
  done
  for n in "${KAFKA3_NODES[@]}"; do
    [[ "$(kafka_metadata_head "$(comp_port "kafka3-$n")")" == 00000003* ]] || return 1
  done
}

kafka3_bootstrap() {
  local n hosts=()
  for n in "${KAFKA3_NODES[@]}"; do hosts+=("127.0.0.1:$(comp_port "kafka3-$n")"); done
  (IFS=,; echo "${hosts[*]}")
}

# Start the nodes that do not run (all three at once: none is ready before a quorum exists),
# then wait for the whole cluster.
cmd_kafka3_up() { # cmd_kafka3_up <node...>
  acquire_lock .lock-kafka3
  install_component kafka
  local n comp pid started=() deadline
  for n in "$@"; do
    comp="kafka3-$n"
    mkdir -p "$(comp_dir "$comp")"
    pid="$(comp_pid "$comp")"
    if [[ -n "$pid" ]]; then
      say "$comp: already running (pid $pid, 127.0.0.1:$(comp_port "$comp"))"
      continue
    fi
    check_ports_free "$comp"
    kafka3_prepare "$n"
    kafka3_start "$n"
    started+=("$n")
  done
  deadline=$((SECONDS + READY_TIMEOUT))
  until kafka3_ready "${started[@]}"; do
    for n in "${started[@]}"; do
      kill -0 "$(<"$(comp_pidfile "kafka3-$n")")" 2>/dev/null ||
        fail_component "kafka3-$n" "process exited during startup"
    done
    ((SECONDS < deadline)) || fail_component "kafka3-${started[0]:-1}" "the cluster is not ready after ${READY_TIMEOUT}s"
    sleep 0.5
  done
  say "kafka3: ready, 3 brokers at $(kafka3_bootstrap)"
}

cmd_kafka3_down() { # cmd_kafka3_down <node...>
  acquire_lock .lock-kafka3
  local n
  for n in "$@"; do stop_component "kafka3-$n" & done
  wait
}

kafka3_main() { # kafka3_main <command> [node...]
  local cmd="$1" nodes=() n
  shift
  for n in "$@"; do
    [[ "$n" == [123] ]] || die "$cmd: unknown node '$n' (expected: 1 2 3)"
    nodes+=("$n")
  done
  [[ ${#nodes[@]} -gt 0 ]] || nodes=("${KAFKA3_NODES[@]}")
  case "$cmd" in
    kafka3-up) cmd_kafka3_up "${nodes[@]}" ;;
    kafka3-down) cmd_kafka3_down "${nodes[@]}" ;;
    kafka3-status) cmd_status "${nodes[@]/#/kafka3-}" ;;
    kafka3-env) printf 'export RECO_KAFKA_BOOTSTRAP=%s\n' "$(kafka3_bootstrap)" ;;
  esac
}

# --------------------------------------------------------------- redis -------

redis_install() {
  have redis-server && have redis-cli && return 0
  apt_install redis-server
  # Debian's package may start (and enable) a system-wide redis on :6379 where
  # an init system runs; the dev stack runs its own, so stop that one.
  if have systemctl && systemctl is-active --quiet redis-server 2>/dev/null; then
    say "redis: stopping/disabling the system redis-server service the package started"
    systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
}

redis_prepare() { mkdir -p "$(comp_dir redis)/data"; }

redis_start() {
  spawn redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
    --dir "$(comp_dir redis)/data" --save '' --appendonly yes --appendfsync everysec \
    --daemonize no
}

redis_ready() {
  [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == "PONG" ]]
}

# ------------------------------------------------------------------ s3 -------

versitygw_bin() { printf '%s/bin/versitygw' "$CACHE_DIR"; }
versitygw_stamp() { printf '%s/bin/.versitygw-version' "$CACHE_DIR"; }
moto_venv() { printf '%s/moto-venv' "$CACHE_DIR"; }

versitygw_installed() {
  [[ -x "$(versitygw_bin)" && "$(cat "$(versitygw_stamp)" 2>/dev/null)" == "$VERSITYGW_VERSION" ]]
}
moto_installed() { [[ -x "$(moto_venv)/bin/moto_server" ]]; }

versitygw_install() {
  versitygw_installed && return 0
  have go || {
    say "s3: 'go' is not installed"
    return 1
  }
  say "s3: go install github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION (takes a few minutes)"
  mkdir -p "$CACHE_DIR/bin" "$CACHE_DIR/go/mod"
  local gocache="$CACHE_DIR/go/build-tmp"
  # Modules are kept in the cache (GOMODCACHE) so a rebuild needs no network;
  # the ~0.5 GB compile cache is only kept while building.
  if GOBIN="$CACHE_DIR/bin" GOMODCACHE="$CACHE_DIR/go/mod" GOCACHE="$gocache" \
    GOFLAGS="${GOFLAGS:-} -modcacherw" CGO_ENABLED=0 \
    go install -ldflags "-s -w" "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"; then
    echo "$VERSITYGW_VERSION" >"$(versitygw_stamp)"
    rm -rf "$gocache"
    return 0
  fi
  return 1
}

moto_install() {
  moto_installed && return 0
  say "s3: installing $MOTO_SPEC into $(moto_venv)"
  python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv
  rm -rf "$(moto_venv)"
  python3 -m venv "$(moto_venv)"
  "$(moto_venv)/bin/pip" install -q "$MOTO_SPEC" || die "s3: pip install $MOTO_SPEC failed"
}

s3_install() {
  ensure_tool curl curl
  case "$S3_BACKEND" in
    versitygw) versitygw_install || die "s3: building VersityGW $VERSITYGW_VERSION failed" ;;
    moto) moto_install ;;
    auto)
      versitygw_install && return 0
      say "WARNING: s3: VersityGW could not be built; falling back to moto's server (objects are NOT persisted across restarts)"
      moto_install
      ;;
    *) die "RECO_S3_BACKEND must be auto, versitygw or moto (got '$S3_BACKEND')" ;;
  esac
}

s3_backend() {
  case "$S3_BACKEND" in
    versitygw | moto) echo "$S3_BACKEND" ;;
    *) if versitygw_installed; then echo versitygw; elif moto_installed; then echo moto; fi ;;
  esac
}

s3_prepare() { mkdir -p "$(comp_dir s3)/data"; }

s3_start() {
  local dir
  dir="$(comp_dir s3)"
  case "$(s3_backend)" in
    versitygw)
      # credentials through the environment, so they do not show up in `ps`
      mkdir -p "$dir/iam"
      ROOT_ACCESS_KEY_ID="$S3_ACCESS_KEY" ROOT_SECRET_ACCESS_KEY="$S3_SECRET_KEY" \
        spawn s3 "$(versitygw_bin)" --port "127.0.0.1:$S3_PORT" --region "$S3_REGION" \
        --iam-dir "$dir/iam" --health /health --quiet posix "$dir/data"
      ;;
    moto)
      say "WARNING: s3: running moto's server (fallback), data is in memory only"
      spawn s3 "$(moto_venv)/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT"
      ;;
    *) die "s3: nothing installed (run: $0 install s3)" ;;
  esac
}

# A SigV4-signed request with the configured credentials; prints the HTTP code.
s3_signed() { # s3_signed <method> <path>
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X "$1" \
    --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
    -H "x-amz-content-sha256: $EMPTY_SHA256" "http://127.0.0.1:$S3_PORT$2" || true
}

# Ready = the server answers HTTP, the credentials are accepted and the bucket
# exists (it is created through the S3 API on the first pass, idempotently).
s3_ready() {
  local code
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$S3_PORT/" || true)"
  [[ "$code" =~ ^[1-5][0-9][0-9]$ ]] || return 1
  code="$(s3_signed HEAD "/$S3_BUCKET")"
  [[ "$code" == 200 ]] && return 0
  if [[ "$code" == 404 ]]; then
    say "s3: creating bucket '$S3_BUCKET'"
    code="$(s3_signed PUT "/$S3_BUCKET")"
    [[ "$code" == 200 || "$code" == 409 ]] || echo "stack.sh: create bucket $S3_BUCKET -> HTTP $code" >>"$(comp_log s3)"
  else
    echo "stack.sh: HEAD bucket $S3_BUCKET -> HTTP $code" >>"$(comp_log s3)"
  fi
  [[ "$(s3_signed HEAD "/$S3_BUCKET")" == 200 ]]
}

# The per-service users (VersityGW's internal IAM, role `user`: no bucket of their own) and the
# bucket policy that grants them their rights (reco_common.storage_access, rendered to
# policy.json); once per data dir, again when policy.json changes (the stamp is a copy of it).
s3_configure() {
  local policy applied user body sha code
  [[ "$(s3_backend)" == versitygw ]] || {
    say "WARNING: s3: moto has no users or policies: every client has the root credentials"
    return 0
  }
  policy="$TEMPLATE_DIR/s3/policy.json"
  applied="$(comp_dir s3)/iam/.reco-policy-applied"
  cmp -s "$policy" "$applied" && return 0
  local admin=("$(versitygw_bin)" admin --er "http://127.0.0.1:$S3_PORT" -a "$S3_ACCESS_KEY"
    -s "$S3_SECRET_KEY" -r "$S3_REGION")
  for user in $(grep -o '"reco-[a-z]*"' "$policy" | tr -d '"' | sort -u); do
    "${admin[@]}" list-users 2>>"$(comp_log s3)" | grep -q "^$user " && continue
    "${admin[@]}" create-user -a "$user" -s "$user-dev-secret" -r user >>"$(comp_log s3)" 2>&1 ||
      fail_component s3 "creating the user $user failed"
  done
  body="$(comp_dir s3)/iam/policy.json"
  sed "s#arn:aws:s3:::reco#arn:aws:s3:::$S3_BUCKET#g" "$policy" >"$body"
  sha="$(sha256sum "$body" | cut -d' ' -f1)"
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X PUT --data-binary "@$body" \
    --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
    -H "x-amz-content-sha256: $sha" "http://127.0.0.1:$S3_PORT/$S3_BUCKET?policy=" || true)"
  [[ "$code" == 200 || "$code" == 204 ]] || fail_component s3 "PutBucketPolicy answered HTTP $code"
  cp "$policy" "$applied"
  say "s3: users $(grep -o '"reco-[a-z]*"' "$policy" | tr -d '"' | sort -u | tr '\n' ' ')and the bucket policy"
}

# ----------------------------------------------------------- lifecycle -------

# Installs into the shared cache are serialized across stack dirs (fd 8).
install_component() {
  mkdir -p "$CACHE_DIR"
  exec 8>"$CACHE_DIR/.stack-install.lock"
  flock -w 1800 8 || die "another scripts/stack.sh is still installing into $CACHE_DIR"
  "${1}_install"
  exec 8>&-
}

wait_ready() {
  local comp="$1" pid deadline
  pid="$(<"$(comp_pidfile "$comp")")"
  deadline=$((SECONDS + READY_TIMEOUT))
  until "${comp}_ready"; do
    kill -0 "$pid" 2>/dev/null || fail_component "$comp" "process $pid exited during startup"
    ((SECONDS < deadline)) || fail_component "$comp" "not ready after ${READY_TIMEOUT}s (port $(comp_port "$comp"))"
    sleep 0.5
  done
  say "$comp: ready (pid $pid, 127.0.0.1:$(comp_port "$comp"))"
}

stop_component() {
  local comp="$1" pid deadline
  pid="$(comp_pid "$comp")"
  if [[ -z "$pid" ]]; then
    rm -f "$(comp_pidfile "$comp")"
    say "$comp: already stopped"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    say "$comp: still alive ${STOP_TIMEOUT}s after SIGTERM, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$(comp_pidfile "$comp")"
  say "$comp: stopped (pid $pid)"
}

cmd_install() {
  acquire_lock
  local comp
  for comp in "$@"; do install_component "$comp"; done
}

# Start every requested component that is not running, then wait for all of
# them: the slow starts (Kafka's JVM) overlap.
cmd_up() {
  acquire_lock
  local comp pid started=()
  for comp in "$@"; do install_component "$comp"; done
  for comp in "$@"; do
    mkdir -p "$(comp_dir "$comp")"
    pid="$(comp_pid "$comp")"
    if [[ -n "$pid" ]] && port_open "$(comp_port "$comp")"; then
      say "$comp: already running (pid $pid, 127.0.0.1:$(comp_port "$comp"))"
      continue
    fi
    if [[ -n "$pid" ]]; then
      started+=("$comp") # alive but not listening yet: still starting
      continue
    fi
    check_ports_free "$comp"
    "${comp}_prepare"
    "${comp}_start"
    started+=("$comp")
  done
  for comp in "${started[@]}"; do wait_ready "$comp"; done
  # Principals and grants, for the components that have them (after readiness: they are made
  # through the server's own API).
  for comp in "${started[@]}"; do
    if declare -F "${comp}_configure" >/dev/null; then "${comp}_configure"; fi
  done
}

# Stop the requested components concurrently (each one waits for its own exit).
cmd_down() {
  acquire_lock
  local comp
  for comp in "$@"; do stop_component "$comp" & done
  wait
}

cmd_restart() {
  cmd_down "$@"
  cmd_up "$@"
}

cmd_status() {
  local comp pid rc=0 state
  for comp in "$@"; do
    pid="$(comp_pid "$comp")"
    if [[ -z "$pid" ]]; then
      state=stopped
      rc=1
    elif port_open "$(comp_port "$comp")"; then
      state=running
    else
      state=starting
      rc=1
    fi
    printf '%-6s %-8s pid=%-8s port=%-5s log=%s\n' "$comp" "$state" "${pid:--}" \
      "$(comp_port "$comp")" "$(comp_log "$comp")"
  done
  return "$rc"
}

cmd_logs() {
  local comp
  for comp in "$@"; do
    printf '==> %s <==\n' "$(comp_log "$comp")"
    tail -n "$LOG_LINES" "$(comp_log "$comp")" 2>/dev/null || echo "(no log yet)"
  done
}

# ------------------------------------------------------- redis cluster -------
# Opt-in: nothing else calls these. Its own lock, so that it never waits for an `up`.

cluster_dir() { printf '%s' "${RECO_REDIS_CLUSTER_DIR:-$STACK_DIR/redis-cluster}"; }
cluster_ports() { seq "$CLUSTER_PORT" $((CLUSTER_PORT + 5)); }
cluster_url() {
  local port nodes=()
  for port in $(cluster_ports); do nodes+=("127.0.0.1:$port"); done
  local IFS=,
  printf 'redis+cluster://%s' "${nodes[*]}"
}
node_cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}" 2>/dev/null; }
node_pid() { # the node's pid if it runs from its own directory (survives pid reuse)
  local dir pid cwd
  dir="$(cluster_dir)/$1"
  [[ -f "$dir/pid" ]] || return 0
  pid="$(<"$dir/pid")"
  kill -0 "$pid" 2>/dev/null || return 0
  cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null)" || return 0
  [[ "$cwd" == "$dir" ]] && echo "$pid"
}

cluster_node_start() {
  local port="$1" dir
  dir="$(cluster_dir)/$port"
  mkdir -p "$dir"
  [[ -n "$(node_pid "$port")" ]] && return 0
  port_open "$port" && die "redis-cluster: port 127.0.0.1:$port is taken by another process"
  # A node without its cluster config is a new one and must start empty (a replica keeps the
  # RDB of its last full sync in its dir, which redis-server would load).
  [[ -f "$dir/nodes.conf" ]] || rm -rf "$dir/dump.rdb" "$dir/appendonlydir"
  (cd "$dir" && exec setsid redis-server --port "$port" --bind 127.0.0.1 \
    --cluster-enabled yes --cluster-config-file nodes.conf \
    --cluster-node-timeout "$CLUSTER_NODE_TIMEOUT_MS" --dir "$dir" --save '' --appendonly no \
    --logfile "$dir/redis.log" >/dev/null 2>&1 </dev/null 8>&- 9>&-) &
  echo "$!" >"$dir/pid"
}

cluster_wait() { # cluster_wait <what> <command...>: poll until it succeeds
  local what="$1" deadline=$((SECONDS + READY_TIMEOUT))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || die "redis-cluster: $what not reached within ${READY_TIMEOUT}s (logs: $(cluster_dir)/*/redis.log)"
    sleep 0.2
  done
}

cluster_all_answer() {
  local port
  for port in $(cluster_ports); do [[ "$(node_cli "$port" ping)" == PONG ]] || return 1; done
}

cluster_all_ok() { # every node sees all slots served, knows its six peers, three of them primaries
  local port described
  for port in $(cluster_ports); do
    node_cli "$port" cluster info | grep -q '^cluster_state:ok' || return 1
    described="$(node_cli "$port" cluster nodes)"
    [[ "$(grep -vc 'fail\|handshake\|noaddr' <<<"$described")" == 6 ]] || return 1
    # A primary restarted after its failover rejoins as a primary of nothing until the others
    # turn it into a replica: until then the layout is not the one the tests (and users) expect.
    [[ "$(awk '$3 ~ /master/' <<<"$described" | wc -l)" == 3 ]] || return 1
  done
}

cmd_cluster_up() {
  redis_install
  mkdir -p "$(cluster_dir)"
  exec 8>"$(cluster_dir)/.lock"
  flock -w 300 8 || die "another cluster-up/down is running"
  local port nodes=()
  for port in $(cluster_ports); do
    cluster_node_start "$port"
    nodes+=("127.0.0.1:$port")
  done
  cluster_wait "every node answering" cluster_all_answer
  if [[ "$(node_cli "$CLUSTER_PORT" cluster info | sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p')" == 1 ]]; then
    say "redis-cluster: creating 3 primaries + 3 replicas on ${nodes[*]}"
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$(cluster_dir)/create.log" 2>&1 ||
      die "redis-cluster: create failed ($(cluster_dir)/create.log)"
  fi
  cluster_wait "cluster_state:ok on every node" cluster_all_ok
  say "redis-cluster: up ($(cluster_url))"
}

cmd_cluster_down() {
  mkdir -p "$(cluster_dir)"
  exec 8>"$(cluster_dir)/.lock"
  flock -w 300 8 || die "another cluster-up/down is running"
  local port pid pids=()
  for port in $(cluster_ports); do
    pid="$(node_pid "$port")"
    [[ -n "$pid" ]] && kill -TERM "$pid" && pids+=("$pid")
  done
  local deadline=$((SECONDS + STOP_TIMEOUT))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  done
  # No persistence: a cluster is created anew by the next cluster-up.
  for port in $(cluster_ports); do
    rm -rf "$(cluster_dir)/$port/"{nodes.conf,pid,dump.rdb,appendonlydir}
  done
  say "redis-cluster: down"
}

cmd_cluster_status() {
  local port pid role rc=0
  for port in $(cluster_ports); do
    pid="$(node_pid "$port")"
    role="$(node_cli "$port" role | head -n1)"
    [[ -n "$pid" && -n "$role" ]] || rc=1
    printf 'redis-cluster %-5s %-8s pid=%s\n' "$port" "${role:-down}" "${pid:--}"
  done
  return "$rc"
}

cmd_env() {
  printf 'export %s=%q\n' \
    RECO_KAFKA_BOOTSTRAP "127.0.0.1:$KAFKA_PORT" \
    RECO_REDIS_URL "redis://127.0.0.1:$REDIS_PORT/0" \
    RECO_S3_ENDPOINT_URL "http://127.0.0.1:$S3_PORT" \
    RECO_S3_ACCESS_KEY "$S3_ACCESS_KEY" \
    RECO_S3_SECRET_KEY "$S3_SECRET_KEY" \
    RECO_S3_BUCKET "$S3_BUCKET" \
    RECO_S3_REGION "$S3_REGION"
}

cmd_grant() {
  [[ -f "${1:-}" ]] || die "grant: give an acls file (lines: principal operations resource pattern name)"
  kafka_answers || die "grant: kafka does not answer on 127.0.0.1:$KAFKA_PORT"
  kafka_access "$(realpath "$1")" || die "grant: applying $1 failed (log: $(comp_log kafka))"
  say "kafka: granted $1"
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  if [[ "$cmd" == grant ]]; then
    cmd_grant "$@"
    return
  fi
  if [[ "$cmd" == cluster-* ]]; then
    mkdir -p "$STACK_DIR"
    STACK_DIR="$(cd "$STACK_DIR" && pwd -P)"
    case "$cmd" in
      cluster-up) cmd_cluster_up ;;
      cluster-down) cmd_cluster_down ;;
      cluster-status) cmd_cluster_status ;;
      cluster-env) printf "export RECO_REDIS_URL='%s'\n" "$(cluster_url)" ;;
      *) die "unknown command '$cmd' (cluster-up, cluster-down, cluster-status, cluster-env)" ;;
    esac
    return
  fi
  if [[ "$cmd" == kafka3-* ]]; then
    mkdir -p "$STACK_DIR"
    STACK_DIR="$(cd "$STACK_DIR" && pwd -P)"
    [[ "$cmd" == kafka3-@(up|down|status|env) ]] || die "unknown command '$cmd'"
    kafka3_main "$cmd" "$@"
    return
  fi
  local comps=() comp
  for comp in "$@"; do
    case "$comp" in
      all) comps+=("${ALL_COMPONENTS[@]}") ;;
      kafka | redis | s3) comps+=("$comp") ;;
      *) die "unknown component '$comp' (expected: kafka redis s3)" ;;
    esac
  done
  [[ ${#comps[@]} -gt 0 ]] || comps=("${ALL_COMPONENTS[@]}")
  mkdir -p "$STACK_DIR"
  STACK_DIR="$(cd "$STACK_DIR" && pwd -P)"
  case "$cmd" in
    install) cmd_install "${comps[@]}" ;;
    up | start) cmd_up "${comps[@]}" ;;
    down | stop) cmd_down "${comps[@]}" ;;
    restart) cmd_restart "${comps[@]}" ;;
    status) cmd_status "${comps[@]}" ;;
    logs) cmd_logs "${comps[@]}" ;;
    env) cmd_env ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

# Run as a command; sourced (scripts/docker.sh), only define the functions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
