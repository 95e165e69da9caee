#!/bin/sh
# Test dependency of tests/test_gateway_e2e.py (and what an operator installs in front of a
# fleet): HAProxy from Debian (bookworm: 2.6, built with Lua 5.3, which the gateway's token
# counting filter needs). Idempotent: does nothing when a haproxy with Lua is already there.
# Needs root (or sudo) for apt-get. The packaged service is disabled: the tests start their
# own HAProxy on 127.0.0.1, and an operator runs the one `fleetctl gateway config` renders.
set -e
if command -v haproxy >/dev/null 2>&1 && haproxy -vv 2>/dev/null | grep -q "Built with Lua"; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
# policy-rc.d 101: the package's postinst must not start the service it installs
POLICY=/usr/sbin/policy-rc.d
CREATED=""
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    CREATED=1
fi
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends haproxy
if [ -n "$CREATED" ]; then $SUDO rm -f "$POLICY"; fi
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now haproxy >/dev/null 2>&1 || true; fi
haproxy -vv | grep -q "Built with Lua" || { echo "error: the installed haproxy has no Lua" >&2; exit 1; }
