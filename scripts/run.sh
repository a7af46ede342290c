#!/usr/bin/env bash
# Runs the gateway on its embedded defaults (or with the arguments given,
# e.g. --config config/kafka.toml). On a fresh machine it first installs what
# the build needs: librdkafka is built from source and needs cmake, the
# curl headers and OpenSSL (headers and pkg-config) for SSL/SASL (Debian
# packages).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v cmake >/dev/null || need+=(cmake)
dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || need+=(libcurl4-openssl-dev)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
if [ "${#need[@]}" -gt 0 ]; then
  echo "[run.sh] installing build dependencies: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
exec cargo run --release -- "$@"
