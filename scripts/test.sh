#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need
# (Debian packages, the tansu Kafka-protocol broker), starts RabbitMQ and
# tansu when they are not already running, waits until they answer, runs
# every test, and stops what it started.
#
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test.sh] %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# 1. Debian packages: cmake + curl headers build librdkafka (rdkafka's
#    cmake-build), rabbitmq-server is the AMQP broker, mosquitto-clients are
#    third-party MQTT clients used by tests, openssl makes the JWT tests' keys;
#    prometheus (promtool) and docker-compose check the files in docker/ and
#    grafana/.
need=()
command -v cmake >/dev/null || need+=(cmake)
dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || need+=(libcurl4-openssl-dev)
command -v rabbitmq-server >/dev/null || need+=(rabbitmq-server)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v openssl >/dev/null || need+=(openssl)
command -v chromium >/dev/null || need+=(chromium)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
# Operations files: promtool/prometheus check the rules and run the
# dashboard's queries; docker-compose validates docker/compose.yaml.
command -v promtool >/dev/null || need+=(prometheus)
command -v docker-compose >/dev/null || need+=(docker-compose)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# 1a. mosquitto: mosquitto_passwd writes the password files the auth tests
#     read, and its broker reads what `mqbridge passwd` writes. Installed
#     under a policy-rc.d that exits 101, so the packaged broker service does
#     not start (and take port 1883).
if ! command -v mosquitto_passwd >/dev/null || ! [ -x /usr/sbin/mosquitto ]; then
  log "installing mosquitto (its service is not started)"
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    made_policy=1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto >/dev/null
  [ "$made_policy" -eq 0 ] || $SUDO rm -f "$policy"
fi

# 1b. Third-party MQTT clients driven by the interop tests: MQTT.js (npm,
#     pinned by tests/interop/package-lock.json) and Python paho-mqtt.
if [ ! -d tests/interop/node_modules/mqtt ]; then
  log "installing MQTT.js (npm ci in tests/interop)"
  npm ci --prefix tests/interop --no-audit --no-fund >/dev/null
fi
if ! python3 -c 'import paho.mqtt' 2>/dev/null; then
  log "installing paho-mqtt"
  python3 -m pip install -q 'paho-mqtt>=2,<3' >/dev/null
fi

# 2. tansu (Kafka protocol), built once and reused. Without `dynostore` it has
#    no working storage engine.
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tansu >/dev/null; then
  log "installing tansu 0.6.0 (one-off, several minutes)"
  cargo install tansu --version 0.6.0 --locked --features dynostore
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port seconds name
  for _ in $(seq 1 "$(($2 * 10))"); do
    port_open "$1" && return 0
    sleep 0.1
  done
  log "$3 did not answer on port $1 within $2 s"
  return 1
}

started_rabbit=0
started_rabbit_tls=0
amqps_dir=""
started_tansu=0
tansu_pid=""
workdir=$(mktemp -d)
cleanup() {
  if [ "$started_tansu" = 1 ] && [ -n "$tansu_pid" ]; then
    log "stopping tansu"
    kill "$tansu_pid" 2>/dev/null || true
  fi
  if [ "$started_rabbit" = 1 ]; then
    log "stopping RabbitMQ"
    rabbitmqctl stop >/dev/null 2>&1 || true
  fi
  if [ "$started_rabbit_tls" = 1 ]; then
    log "stopping the TLS RabbitMQ node"
    rabbitmqctl -n "$TLS_NODE" stop >/dev/null 2>&1 || true
  fi
  [ -z "$amqps_dir" ] || rm -rf "$amqps_dir"
  rm -rf "$workdir"
}
trap cleanup EXIT

# 3. RabbitMQ on 127.0.0.1:5672 (guest/guest). No systemd here: start it ourselves.
if ! port_open 5672; then
  log "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  started_rabbit=1
  wait_port 5672 60 RabbitMQ
  rabbitmqctl await_startup >/dev/null
fi

# 3b. A second, TLS-only RabbitMQ node on 5671 that requires client
#     certificates, for the amqps:// tests: a CA, a server certificate for
#     localhost and a client certificate made here with openssl (never
#     committed). Its own node name, data and log directories, so the plain
#     node is untouched. The broker runs as the rabbitmq user: it must be
#     able to read the directory.
TLS_NODE=mqbridge-tls@localhost
if [ -z "${MQBRIDGE_TEST_AMQPS_URI:-}" ] && ! port_open 5671; then
  log "starting a TLS RabbitMQ node on 5671"
  amqps_dir=$(mktemp -d /tmp/mqbridge-amqps.XXXXXX)
  (
    cd "$amqps_dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=mqbridge test CA" \
      -keyout ca.key -out ca.pem 2>/dev/null
    for who in server client; do
      cn=$([ "$who" = server ] && echo localhost || echo mqbridge)
      openssl req -newkey rsa:2048 -nodes -subj "/CN=$cn" -keyout "$who.key" -out "$who.csr" 2>/dev/null
    done
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    for who in server client; do
      openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -out "$who.pem" -extfile "$who.ext" 2>/dev/null
    done
    cat >rabbitmq.conf <<CONF
listeners.tcp = none
listeners.ssl.default = 5671
ssl_options.cacertfile = $amqps_dir/ca.pem
ssl_options.certfile = $amqps_dir/server.pem
ssl_options.keyfile = $amqps_dir/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
CONF
    echo '[].' >enabled_plugins
  )
  chmod 755 "$amqps_dir"
  chown -R rabbitmq:rabbitmq "$amqps_dir" 2>/dev/null || true
  RABBITMQ_NODENAME=$TLS_NODE RABBITMQ_DIST_PORT=25673 \
    RABBITMQ_MNESIA_BASE="$amqps_dir/mnesia" RABBITMQ_LOG_BASE="$amqps_dir/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$amqps_dir/enabled_plugins" \
    RABBITMQ_CONFIG_FILE="$amqps_dir/rabbitmq.conf" \
    rabbitmq-server -detached >/dev/null 2>&1 || true
  started_rabbit_tls=1
  wait_port 5671 60 "TLS RabbitMQ"
  rabbitmqctl -n "$TLS_NODE" await_startup >/dev/null
  export MQBRIDGE_TEST_AMQPS_URI="amqps://guest:guest@localhost:5671/%2f"
  export MQBRIDGE_TEST_AMQPS_DIR="$amqps_dir"
fi

# 4. tansu on 127.0.0.1:9092 with in-memory storage (run from an empty dir:
#    it reads a .env file from its working directory).
if ! port_open 9092; then
  log "starting tansu"
  (cd "$workdir" && exec tansu broker \
    --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$workdir/tansu.log" 2>&1) &
  tansu_pid=$!
  started_tansu=1
  wait_port 9092 30 tansu
fi

# 5. Every test. Tests that need a service fail (not skip) when it is missing
#    under CI: any value of CI but empty, 0 or false (tests/common/service.rs).
export MQBRIDGE_TEST_AMQP_URI="${MQBRIDGE_TEST_AMQP_URI:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export MQBRIDGE_TEST_KAFKA="${MQBRIDGE_TEST_KAFKA:-127.0.0.1:9092}"
# Tests whose service or tool is missing record themselves here (outside CI;
# under CI they fail instead) so that a skip never passes for a pass.
export MQBRIDGE_SKIP_LOG="$workdir/skipped"
: >"$MQBRIDGE_SKIP_LOG"
log "running the test suite"
# A one-off build (CI, a fresh clone) gains nothing from incremental
# artefacts, which are as large as the build itself; the disk may be small.
in_ci() { case "${CI:-}" in "" | 0 | false) return 1 ;; *) return 0 ;; esac; }
if in_ci; then
  export CARGO_INCREMENTAL=0
fi
log "disk before the build: $(df -h . | awk 'NR==2 {print $4 " free"}')"
status=0
cargo test --all-targets --no-fail-fast "$@" || status=$?
skipped=$(sort -u "$MQBRIDGE_SKIP_LOG" | wc -l)
if [ "$skipped" -gt 0 ]; then
  log "$skipped test(s) SKIPPED (missing service or tool):"
  sort -u "$MQBRIDGE_SKIP_LOG" | sed 's/^/[test.sh]   /' >&2
else
  log "0 tests skipped"
fi

# 5b. Benchmark harness smoke (only after a green suite): every scenario of
#     bench/ with tiny counts against the debug build and its peers
#     (Mosquitto and a RabbitMQ node with the MQTT plugin, both started by
#     the harness; tansu and RabbitMQ as started above), so the harness keeps
#     building and running. It measures nothing (no speed is
#     asserted anywhere); real runs: see README, "Benchmark".
if [ "$status" -eq 0 ]; then
  log "benchmark harness smoke"
  cargo build -q --bin mqbridge
  cargo run -q -p mqbridge-bench -- --smoke --mqbridge target/debug/mqbridge || status=$?
fi

# 6. Fuzz smoke (only after a green suite): every cargo-fuzz target in fuzz/
#    for a few seconds, so the targets keep building and a shallow crash fails
#    the run. The fuzz crate is its own workspace with its own target dir: a
#    build from clean costs about 7 CPU-minutes (plus a one-off cargo-fuzz
#    install). Seconds per target in MQBRIDGE_FUZZ_SMOKE_SECS (default 5; 0
#    skips the step).
smoke_secs="${MQBRIDGE_FUZZ_SMOKE_SECS:-5}"
if [ "$status" -eq 0 ] && [ "$smoke_secs" != 0 ]; then
  log "disk after the suite: $(df -h . | awk 'NR==2 {print $4 " free"}'), target/ $(du -sh target 2>/dev/null | cut -f1)"
  log "fuzz smoke: every target for ${smoke_secs}s"
  scripts/fuzz.sh "$smoke_secs" || status=$?
fi
exit "$status"
