#!/bin/sh
# Test dependency of the PostgreSQL store tests (tests/pg_support.py): Debian's PostgreSQL server
# binaries (initdb, pg_ctl under /usr/lib/postgresql/<version>/bin). The tests start and stop
# their own throwaway cluster on 127.0.0.1; the packaged cluster and its service stay off.
# Idempotent: does nothing when the binaries are there. Needs root (or sudo) for apt-get.
set -e
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && id postgres >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    postgresql postgresql-contrib
# The package creates a "main" cluster and may start it: stop it and keep it from starting at boot.
if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters -h 2>/dev/null | while read -r ver name _rest; do
        $SUDO pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
        if [ -f "/etc/postgresql/$ver/$name/start.conf" ]; then
            echo manual | $SUDO tee "/etc/postgresql/$ver/$name/start.conf" >/dev/null
        fi
    done
fi
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true; fi
