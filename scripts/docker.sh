#!/usr/bin/env bash
# scripts/docker.sh - a local Docker engine for the reco platform, and every image it runs,
# built without a container registry.
#
#   scripts/docker.sh install            Debian's docker.io + mmdebstrap; Docker Compose built once
#                                        from its Go module into the cache
#   scripts/docker.sh up                 start dockerd on its own socket, wait until it answers
#   scripts/docker.sh down               stop dockerd (it stops its containers first)
#   scripts/docker.sh status             one line; exit 0 only if the engine answers
#   scripts/docker.sh env                `export DOCKER_HOST=...` and the local image names
#   scripts/docker.sh images [image...]  build the local substitutes and the service images
#   scripts/docker.sh compose ARGS...    `docker compose ARGS` on this engine with those images
#   scripts/docker.sh docker ARGS...     `docker ARGS` on this engine
#
# Images (default: all, in this order):
#   python     reco-local/python:3.11-bookworm  Python 3.11 from Debian (mmdebstrap), for
#                                               python:3.11.14-slim-bookworm
#   uv         reco-local/uv:<v>                the uv binary of the pinned PyPI wheel, for
#                                               ghcr.io/astral-sh/uv:<v>
#   kafka      reco-local/kafka:<v>             the official jars from Maven Central on Debian's
#                                               JRE, configured like apache/kafka:<v>
#   redis      reco-local/redis:7.0-bookworm    Debian's redis-server, for redis:7.4.5-alpine
#   versitygw  reco-local/versitygw:<v>         VersityGW built from source, for versity/versitygw
#   api controller trainer worker               reco-<svc>:<version> from services/Dockerfile
#
# Debian packages, the Kafka jars, VersityGW and Compose are fetched once into the cache
# (the Kafka and VersityGW steps are scripts/stack.sh's); the Python wheels are cached by
# BuildKit (a cache mount) inside the engine's data root. State (data root, socket, log, pid)
# lives in $RECO_STACK_DIR/docker; once built, a rebuild needs no network.
#
# Settings (environment):
#   RECO_CACHE_DIR (~/.cache/reco)          RECO_STACK_DIR (<repo>/.stack)
#   RECO_COMPOSE_VERSION (v5.6.0)           RECO_DOCKER_TIMEOUT (60, seconds for `up`)
#   RECO_DOCKER_ADDRESS_POOL (a 10.x.0.0/16 derived from the state dir: engines of two
#     checkouts on one machine never share a subnet)
#   RECO_DOCKER_CA_BUNDLE (/etc/ssl/certs/ca-certificates.crt: given to the builds' `uv sync`
#     as the secret `ca-bundle`, for a TLS-inspecting proxy)
#   RECO_DOCKER_STORAGE_DRIVER (overlay2 if an overlay mounts in the state dir, else vfs)
#   RECO_DOCKER_BUILD_CACHE (10GB: the build cache kept after `images`)
set -euo pipefail

# The dev stack's helpers (say, die, apt_install, spawn, fail_component, stop_component) and
# its install steps for Kafka and VersityGW.
# shellcheck source=scripts/stack.sh
source "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
LOG_TAG=docker
DOCKERFILES="$REPO_ROOT/deploy/docker"

COMPOSE_VERSION="${RECO_COMPOSE_VERSION:-v5.6.0}"
COMPOSE_BIN="$CACHE_DIR/bin/docker-compose-$COMPOSE_VERSION"
DOCKER_TIMEOUT="${RECO_DOCKER_TIMEOUT:-60}"
CA_BUNDLE="${RECO_DOCKER_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
# Debian's client: it speaks the engine's API (1.41) and builds with BuildKit natively.
DOCKER=/usr/bin/docker
DEBIAN_SOURCES=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)
# A root filesystem: Debian bookworm minbase without docs, man pages or translations (as Debian's
# slim images; the man1 directory stays for the alternatives some packages register, Java's
# among them), merged /usr without the usrmerge package (and the Perl it pulls in), Python's
# headers without its static library.
ROOTFS_OPTS=(
  --format=tar --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/libpython3.11*.a'
  --dpkgopt='path-exclude=/usr/lib/python3.11/config-3.11-x86_64-linux-gnu/*.a'
  --setup-hook='mkdir -p "$1"/usr/share/man/man1'
)
ALL_IMAGES=(python uv kafka redis versitygw api controller trainer worker)

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

state_dir() { comp_dir docker; }
socket() { printf 'unix://%s/docker.sock' "$(state_dir)"; }

# A /16 of 10.0.0.0/8 that depends on the state dir, so that two checkouts' engines (and
# their compose networks) do not route into each other.
address_pool() {
  local n
  n=$((16#$(printf '%s' "$(state_dir)" | sha256sum | cut -c1-4) % 200 + 32))
  printf '%s' "${RECO_DOCKER_ADDRESS_POOL:-10.$n.0.0/16}"
}

# overlay2 where the kernel lets us mount an overlay in the state directory (a layer is a diff);
# vfs elsewhere (any filesystem, nested or not; but each layer is a full copy of the image:
# several times the disk and the time). RECO_DOCKER_STORAGE_DRIVER chooses.
storage_driver() {
  local probe
  if [[ -n "${RECO_DOCKER_STORAGE_DRIVER:-}" ]]; then
    echo "$RECO_DOCKER_STORAGE_DRIVER"
    return
  fi
  probe="$(state_dir)/overlay-probe"
  mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
  if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
    "$probe/merged" 2>/dev/null; then
    umount "$probe/merged"
    echo overlay2
  else
    echo vfs
  fi
  rm -rf "$probe"
}

engine() { DOCKER_HOST="$(socket)" "$DOCKER" "$@"; }
engine_answers() { engine version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# ------------------------------------------------------------------ install --

compose_install() {
  [[ -x "$COMPOSE_BIN" ]] && return 0
  compose_build
  # `docker compose` for the people on this machine: the CLI plugin is the cached binary.
  mkdir -p "$HOME/.docker/cli-plugins"
  ln -sfn "$COMPOSE_BIN" "$HOME/.docker/cli-plugins/docker-compose"
}

compose_build() {
  have go || die "compose: 'go' is not installed (Docker Compose is built from its Go module)"
  local module="github.com/docker/compose/v5" dir gocache="$CACHE_DIR/go/build-tmp"
  say "compose: building $module@$COMPOSE_VERSION (takes a few minutes)"
  mkdir -p "$CACHE_DIR/bin" "$CACHE_DIR/go/mod"
  export GOMODCACHE="$CACHE_DIR/go/mod" GOFLAGS="-modcacherw -buildvcs=false" GOTOOLCHAIN=local
  # `go install module@version` refuses a module whose go.mod has exclude directives: build it
  # as the main module, from its own go.mod and go.sum.
  dir="$(go mod download -json "$module@$COMPOSE_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$dir" ]] || die "compose: go mod download $module@$COMPOSE_VERSION failed"
  (cd "$dir" && GOCACHE="$gocache" CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X $module/internal.Version=$COMPOSE_VERSION" -o "$COMPOSE_BIN.tmp" ./cmd) ||
    die "compose: go build in $dir failed"
  mv -f "$COMPOSE_BIN.tmp" "$COMPOSE_BIN"
  rm -rf "$gocache"
}

docker_install() {
  [[ -x "$DOCKER" ]] && have dockerd || apt_install docker.io
  ensure_tool mmdebstrap mmdebstrap
}

# ------------------------------------------------------------------- engine --

docker_start() {
  local dir
  dir="$(state_dir)"
  mkdir -p "$dir/data" "$dir/exec"
  # No iptables (the host's firewall is not ours) and no default bridge: compose's networks
  # come from our own address pool.
  spawn docker dockerd --storage-driver="$(storage_driver)" --iptables=false --bridge=none \
    --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
    --host "$(socket)" --default-address-pool "base=$(address_pool),size=24"
}

cmd_up() {
  acquire_lock
  install_component docker
  local pid deadline
  pid="$(comp_pid docker)"
  if [[ -n "$pid" ]] && engine_answers; then
    say "docker: already running (pid $pid, $(socket))"
    return 0
  fi
  [[ -n "$pid" ]] || docker_start
  pid="$(<"$(comp_pidfile docker)")"
  deadline=$((SECONDS + DOCKER_TIMEOUT))
  until engine_answers; do
    kill -0 "$pid" 2>/dev/null || fail_component docker "dockerd (pid $pid) exited during startup"
    ((SECONDS < deadline)) || fail_component docker "dockerd not answering on $(socket) after ${DOCKER_TIMEOUT}s"
    sleep 0.5
  done
  say "docker: ready (pid $pid, $(socket), engine $(engine info --format '{{.ServerVersion}}, storage {{.Driver}}'))"
}

cmd_status() {
  local pid state=stopped rc=1
  pid="$(comp_pid docker)"
  if [[ -n "$pid" ]] && engine_answers; then
    state=running rc=0
  elif [[ -n "$pid" ]]; then
    state=starting
  fi
  printf '%-6s %-8s pid=%-8s socket=%s log=%s\n' docker "$state" "${pid:--}" "$(socket)" \
    "$(comp_log docker)"
  return "$rc"
}

require_engine() {
  engine_answers || die "docker: the engine is not running on $(socket) (run: $0 up; log: $(comp_log docker))"
}

# ------------------------------------------------------------------- images --

# Image names and versions, each from its one source: the service Dockerfile's defaults, the
# dev stack's versions, the services' manifests.
dockerfile_default() { # <ARG name> -> its default in services/Dockerfile
  sed -n "s/^ARG $1=//p" "$REPO_ROOT/services/Dockerfile"
}
UV_VERSION="$(dockerfile_default UV_IMAGE)"
UV_VERSION="${UV_VERSION##*:}"
service_version() { sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/services/$1/pyproject.toml"; }

image_name() {
  case "$1" in
    python) echo reco-local/python:3.11-bookworm ;;
    uv) echo "reco-local/uv:$UV_VERSION" ;;
    kafka) echo "reco-local/kafka:$KAFKA_VERSION" ;;
    redis) echo reco-local/redis:7.0-bookworm ;;
    versitygw) echo "reco-local/versitygw:$VERSITYGW_VERSION" ;;
    api | controller | trainer | worker) echo "reco-$1:$(service_version "$1")" ;;
    *) die "unknown image '$1' (expected: ${ALL_IMAGES[*]})" ;;
  esac
}

# Debian packages of each substitute's root filesystem. Python's headers as in the official
# image (a source distribution's C extension builds against them: the trainer's LightFM).
rootfs_packages() {
  case "$1" in
    python) echo python3.11,python3,libpython3.11-dev,passwd,ca-certificates ;;
    kafka) echo openjdk-17-jre-headless,passwd ;;
    redis) echo redis-server,passwd ;;
    versitygw) echo wget,passwd ;;
  esac
}

# A minimal Debian bookworm root filesystem as a tarball in the cache, named after what
# determines it. The .debs are kept in the cache too: a rebuild downloads nothing.
rootfs() { # <name> -> path of the tarball
  local name="$1" packages key tar debs="$CACHE_DIR/docker/debs" log
  packages="$(rootfs_packages "$name")"
  key="$(printf '%s\n' "$packages" "${DEBIAN_SOURCES[@]}" "${ROOTFS_OPTS[@]}" | sha256sum | cut -c1-12)"
  tar="$CACHE_DIR/docker/rootfs/$name-$key.tar"
  if [[ ! -f "$tar" ]]; then
    log="$(state_dir)/rootfs-$name.log"
    mkdir -p "$debs" "$(dirname "$tar")"
    rm -f "$tar.partial"
    say "$name: mmdebstrap bookworm minbase + $packages (a minute or two; log $log)"
    mmdebstrap "${ROOTFS_OPTS[@]}" --include="$packages" --skip=download/empty --skip=essential/unlink \
      --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
      --setup-hook="sync-in $debs /var/cache/apt/archives/" \
      --customize-hook="sync-out /var/cache/apt/archives $debs" \
      bookworm "$tar.partial" "${DEBIAN_SOURCES[@]}" >"$log" 2>&1 ||
      die "$name: mmdebstrap failed (packages: $packages; log $log)"
    mv -f "$tar.partial" "$tar"
  fi
  printf '%s' "$tar"
}

# `docker import` of the root filesystem, skipped when the image already holds that tarball.
import_rootfs() { # <name> <image> [--change ...]
  local name="$1" image="$2" tar
  shift 2
  tar="$(rootfs "$name")"
  if [[ "$(engine image inspect --format '{{index .Config.Labels "reco.rootfs"}}' "$image" 2>/dev/null)" == "$(basename "$tar")" ]]; then
    return 0
  fi
  say "$name: docker import $(basename "$tar") -> $image"
  engine import --change "LABEL reco.rootfs=$(basename "$tar")" "$@" "$tar" "$image" >/dev/null
}

# docker build with BuildKit, the host's network (the registries are reachable from the host
# only) and its CA bundle for the steps that mount it.
build() { # <tag> <context> [docker build args...]
  local tag="$1" context="$2" secret=()
  shift 2
  [[ -f "$CA_BUNDLE" ]] && secret=(--secret "id=ca-bundle,src=$CA_BUNDLE")
  say "$tag: docker build"
  DOCKER_BUILDKIT=1 engine build --network host "${secret[@]}" --tag "$tag" "$@" "$context" >&2 ||
    die "$tag: docker build failed (context $context; build output above; engine log $(comp_log docker))"
}

# A build context of its own for a substitute: deploy/docker/<name>/ plus staged files.
context_dir() { # <name>
  local dir
  dir="$(state_dir)/context/$1"
  rm -rf "$dir"
  mkdir -p "$dir"
  cp -r "$DOCKERFILES/$1/." "$dir/"
  printf '%s' "$dir"
}

image_python() {
  import_rootfs python "$(image_name python)" --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]'
}

image_uv() {
  local dir wheel="$CACHE_DIR/docker/uv-$UV_VERSION"
  if [[ ! -x "$wheel/uv/bin/uv" ]]; then
    say "uv: the uv==$UV_VERSION wheel from PyPI"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheel" "uv==$UV_VERSION" ||
      die "uv: pip download uv==$UV_VERSION failed"
    python3 -m zipfile -e "$wheel"/uv-*.whl "$wheel/uv"
    chmod +x "$wheel"/uv/uv-*.data/scripts/*
    mkdir -p "$wheel/uv/bin"
    cp "$wheel"/uv/uv-*.data/scripts/uv "$wheel"/uv/uv-*.data/scripts/uvx "$wheel/uv/bin/"
  fi
  dir="$(context_dir uv)"
  cp "$wheel/uv/bin/uv" "$wheel/uv/bin/uvx" "$dir/"
  build "$(image_name uv)" "$dir"
}

image_kafka() {
  local dir base=reco-local/rootfs-kafka:bookworm
  install_component kafka
  import_rootfs kafka "$base"
  dir="$(context_dir kafka)"
  mkdir -p "$dir/rootfs/opt/kafka/config"
  cp -rl "$(kafka_home)/libs" "$dir/rootfs/opt/kafka/libs" 2>/dev/null ||
    cp -r "$(kafka_home)/libs" "$dir/rootfs/opt/kafka/libs"
  cp "$TEMPLATE_DIR/kafka/log4j2.yaml" "$TEMPLATE_DIR/kafka/log4j2-tools.yaml" "$dir/rootfs/opt/kafka/config/"
  build "$(image_name kafka)" "$dir" --build-arg "BASE=$base"
}

image_redis() {
  local base=reco-local/rootfs-redis:bookworm
  import_rootfs redis "$base"
  build "$(image_name redis)" "$(context_dir redis)" --build-arg "BASE=$base"
}

image_versitygw() {
  local dir base=reco-local/rootfs-versitygw:bookworm
  S3_BACKEND=versitygw install_component s3
  import_rootfs versitygw "$base"
  dir="$(context_dir versitygw)"
  cp "$(versitygw_bin)" "$dir/versitygw"
  build "$(image_name versitygw)" "$dir" --build-arg "BASE=$base"
}

image_service() { # <service>
  build "$(image_name "$1")" "$REPO_ROOT" --file "$REPO_ROOT/services/Dockerfile" \
    --build-arg "SERVICE=$1" --build-arg "PYTHON_IMAGE=$(image_name python)" \
    --build-arg "UV_IMAGE=$(image_name uv)"
}

# What each image holds, pinned: Debian packages and Python distributions with versions.
# Listed again only when the image changed (a container on vfs copies the whole image).
package_list() { # <image>
  local image id out
  image="$(image_name "$1")"
  id="$(engine image inspect --format '{{.Id}}' "$image")"
  out="$(state_dir)/packages/${image//[\/:]/_}.txt"
  if [[ "$(head -n1 "$out" 2>/dev/null)" != "# $image $id" ]]; then
    mkdir -p "$(dirname "$out")"
    {
      echo "# $image $id"
      engine run --rm --network none --entrypoint /bin/sh "$image" -c '
        echo "# Debian packages (dpkg-query -W)"; dpkg-query -W
        if [ -x /app/.venv/bin/python ]; then
          echo "# Python distributions in /app/.venv"
          /app/.venv/bin/python -c "import importlib.metadata as m; print(*sorted(f\"{d.name}=={d.version}\" for d in m.distributions()), sep=chr(10))"
        fi'
    } >"$out.partial"
    mv -f "$out.partial" "$out"
  fi
  say "$image: $(engine image inspect --format '{{.Size}}' "$image" | numfmt --to=iec), packages in $out"
}

cmd_images() {
  require_engine
  local name start
  for name in "$@"; do
    start=$SECONDS
    case "$name" in
      api | controller | trainer | worker) image_service "$name" ;;
      *) "image_$name" ;;
    esac
    [[ "$name" == uv ]] || package_list "$name"
    say "$name: done in $((SECONDS - start))s"
  done
  # What a rebuild replaced: the images it untagged, build cache beyond a bound (the wheels'
  # cache mount is recent, so it stays).
  engine image prune --force >/dev/null
  engine builder prune --force --keep-storage "${RECO_DOCKER_BUILD_CACHE:-10GB}" >/dev/null
}

# ------------------------------------------------------------------ compose --

# The variables docker-compose.yml reads to run on the local substitutes.
cmd_env() {
  printf 'export %s=%q\n' \
    DOCKER_HOST "$(socket)" \
    RECO_DOCKER "$DOCKER" \
    RECO_COMPOSE "$COMPOSE_BIN" \
    RECO_PYTHON_IMAGE "$(image_name python)" \
    RECO_UV_IMAGE "$(image_name uv)" \
    RECO_KAFKA_IMAGE "$(image_name kafka)" \
    RECO_REDIS_IMAGE "$(image_name redis)" \
    RECO_S3_IMAGE "$(image_name versitygw)"
}

# `compose ARGS` on this engine with the substitutes. An `up` that fails (a port in use, an
# image missing) takes down what it started: nothing is left running.
cmd_compose() {
  require_engine
  [[ -x "$COMPOSE_BIN" ]] || install_component compose
  eval "$(cmd_env)"
  export DOCKER_HOST RECO_PYTHON_IMAGE RECO_UV_IMAGE RECO_KAFKA_IMAGE RECO_REDIS_IMAGE RECO_S3_IMAGE
  local compose=("$COMPOSE_BIN" --project-directory "$REPO_ROOT") at=1 rc=0
  while ((at <= $#)) && [[ "${!at}" != up ]]; do at=$((at + 1)); done
  ((at <= $#)) || exec "${compose[@]}" "$@"
  "${compose[@]}" "$@" || rc=$?
  ((rc == 0)) && return 0
  say "ERROR: compose: \`${*:at}\` failed (exit $rc); taking down what it started (volumes are kept). Engine log: $(comp_log docker)"
  "${compose[@]}" "${@:1:at-1}" down >&2 || true
  exit "$rc"
}

docker_main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  mkdir -p "$STACK_DIR"
  STACK_DIR="$(cd "$STACK_DIR" && pwd -P)"
  case "$cmd" in
    install)
      acquire_lock
      install_component docker
      install_component compose
      ;;
    up | start) cmd_up ;;
    down | stop)
      acquire_lock
      stop_component docker
      ;;
    status) cmd_status ;;
    env) cmd_env ;;
    images)
      [[ $# -gt 0 ]] || set -- "${ALL_IMAGES[@]}"
      cmd_images "$@"
      ;;
    compose) cmd_compose "$@" ;;
    docker)
      require_engine
      engine "$@"
      ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

docker_main "$@"
