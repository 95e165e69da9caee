#!/bin/sh
# Test dependency of tests/test_forecast_prometheus.py: a real Prometheus server (Debian package).
# Idempotent: does nothing when the binary is already there. scripts/test.sh runs every
# scripts/deps-*.sh when root (CI); needs root (or sudo) for apt-get.
set -e
if command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
# DPkg::Lock::Timeout: wait for another apt instead of failing on its lock.
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends prometheus
# the package enables a system service; the tests start their own server on 127.0.0.1
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
