#!/usr/bin/env bash
# Installs what fleet mode and its tests need on this machine, from Debian's packages, when
# it is missing:
# - etcd (package etcd-server: /usr/bin/etcd), which tests/cluster.rs starts on loopback ports;
# - protoc (package protobuf-compiler), which the etcd-client crate's build script runs;
# - Prometheus (package prometheus: /usr/bin/prometheus), which tests/prometheus.rs starts.
# As root it runs apt-get itself; otherwise through sudo when there is one.
set -euo pipefail

missing=()
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || missing+=(etcd-server)
command -v protoc >/dev/null 2>&1 || [ -n "${PROTOC:-}" ] || missing+=(protobuf-compiler)
command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "fetch-tools: ${missing[*]} missing and no way to install them (not root, no sudo); install them with apt-get" >&2
  exit 1
fi
command -v apt-get >/dev/null 2>&1 || { echo "fetch-tools: install ${missing[*]} (Debian package names) by hand: no apt-get here" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >/dev/null
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages may start services of their own (where systemd runs); tests start their own on
# free loopback ports and never use them.
echo "fetch-tools: installed ${missing[*]}"
