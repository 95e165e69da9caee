#!/bin/sh
# Test dependency of tests/test_service.py: `systemd-analyze` (Debian package systemd) to verify
# deploy/fleetd.service. The tests never start systemd; they only run the offline checker.
# Idempotent: does nothing when the binary is there. Needs root (or sudo) for apt-get.
set -e
if command -v systemd-analyze >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends systemd
