#!/usr/bin/env bash
# Prepare a Debian 12 host for vpnlab, as root. Idempotent: installs only missing packages and starts
# a Docker engine only when none answers. Used by `make docker` (and so by `make test` / `make lab-up`).
set -euo pipefail

PACKAGES=(
  docker.io debootstrap user-mode-linux kmod patchelf gpgv iproute2 iptables nftables iperf3 tcpdump graphviz
  strongswan-swanctl charon-systemd libstrongswan-standard-plugins libcharon-extra-plugins
  keepalived conntrack python3-venv ca-certificates
)
DOCKERD_LOG=/var/log/vpnlab-dockerd.log
SOCKET=/var/run/docker.sock
WAIT_S=60

if [[ $(id -u) -ne 0 ]]; then
  echo "setup-host.sh: run as root (it installs packages and starts dockerd)" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup-host.sh: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if docker info >/dev/null 2>&1; then
  exit 0
fi
if [[ -d /run/systemd/system ]] && systemctl start docker 2>/dev/null; then
  :
else
  echo "setup-host.sh: starting dockerd (log: $DOCKERD_LOG)"
  # setsid: the engine must outlive this script and make's process group.
  setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
fi
for ((i = 0; i < WAIT_S * 2; i++)); do
  if [[ -S $SOCKET ]] && docker info >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.5
done
echo "setup-host.sh: dockerd did not answer within ${WAIT_S}s; last lines of $DOCKERD_LOG:" >&2
tail -n 5 "$DOCKERD_LOG" >&2 || true
exit 1
