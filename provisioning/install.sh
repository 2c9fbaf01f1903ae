#!/bin/sh
# Turn a blank Debian 12 box into a fieldkit kit, from this source tree:
#
#   sudo provisioning/install.sh --answers /path/to/kit-0042.toml
#
# Installs the Debian packages the kit uses, creates the kit's Python environment and
# installs fieldkit into it, then hands over to `fieldkit provision`, which does the rest
# (service account, kit data, systemd unit, Wi-Fi access point, time sync, log rotation).
# Safe to run again: it changes nothing that is right and fixes what is not.
#
# Environment:
#   FIELDKIT_INSTALL_DIR  where the Python environment lives (default /opt/fieldkit)
#   FIELDKIT_WHEELHOUSE   a folder of wheels to install from without a network (it must hold
#                         the files provisioning/requirements.lock pins, with those hashes)
#   FIELDKIT_SKIP_APT=1   do not call apt-get (the packages are already in the image)
set -eu

HERE=$(cd "$(dirname "$0")/.." && pwd)
INSTALL_DIR=${FIELDKIT_INSTALL_DIR:-/opt/fieldkit}
VENV="$INSTALL_DIR/venv"

if [ "$(id -u)" != 0 ]; then
    echo "install.sh changes the system: run it as root (sudo $0 $*)" >&2
    exit 2
fi

if [ "${FIELDKIT_SKIP_APT:-0}" != 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # hostapd+dnsmasq for the access point (or NetworkManager, if the answers say so),
    # chrony for time, logrotate for the kit log.
    apt-get install -y -q --no-install-recommends \
        python3 python3-venv python3-pip hostapd dnsmasq chrony logrotate systemd
fi

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
pip_install() {
    if [ -n "${FIELDKIT_WHEELHOUSE:-}" ]; then
        "$VENV/bin/pip" install --quiet --no-index --find-links "$FIELDKIT_WHEELHOUSE" "$@"
    else
        "$VENV/bin/pip" install --quiet "$@"
    fi
}
# The locked dependencies first (pinned, every file's hash checked), then fieldkit itself
# without resolving again: the box runs exactly the versions the tests ran with.
pip_install --require-hashes -r "$HERE/provisioning/requirements.lock"
pip_install --upgrade --no-deps "$HERE"
if [ -n "${FIELDKIT_WHEELHOUSE:-}" ]; then
    set -- --wheelhouse "$FIELDKIT_WHEELHOUSE" "$@"
fi

exec "$VENV/bin/fieldkit" provision --source "$HERE" "$@"
