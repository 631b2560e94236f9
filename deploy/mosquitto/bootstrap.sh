#!/bin/sh
# One-time bootstrap of the Quanedge broker (mosquitto 2.0 + dynamic-security plugin).
#
#   QUANEDGE_BROKER_ADMIN_PASSWORD=... QUANEDGE_MQTT_PASSWORD=... sh deploy/mosquitto/bootstrap.sh
#
# 1. makes the dynsec file with the admin account the fleet server manages box accounts with;
# 2. installs the shipped config and (re)starts mosquitto;
# 3. creates the fleet server bridge's account and role, deny-by-default ACL access
#    (`quanedge fleet broker init`, which is idempotent: re-run it to reset the bridge password).
# Box accounts are NOT made here: the fleet server creates one per box at enrolment.
set -eu
: "${QUANEDGE_BROKER_ADMIN_PASSWORD:?set the broker admin password}"
: "${QUANEDGE_MQTT_PASSWORD:?set the bridge account password}"
ADMIN_USER="${QUANEDGE_BROKER_ADMIN_USERNAME:-quanedge-admin}"
BRIDGE_USER="${QUANEDGE_BRIDGE_USERNAME:-quanedge-fleet}"
PREFIX="${QUANEDGE_TOPIC_PREFIX:-quanedge}"
DYNSEC=/var/lib/mosquitto/dynamic-security.json
HERE="$(cd "$(dirname "$0")" && pwd)"

if [ ! -e "$DYNSEC" ]; then
    mosquitto_ctrl dynsec init "$DYNSEC" "$ADMIN_USER" "$QUANEDGE_BROKER_ADMIN_PASSWORD"
    chown mosquitto:mosquitto "$DYNSEC" 2>/dev/null || true
    chmod 600 "$DYNSEC"
fi
install -b -m 644 "$HERE/mosquitto.conf" /etc/mosquitto/mosquitto.conf   # -b: keeps the distro file as mosquitto.conf~
systemctl restart mosquitto
sleep 1
QUANEDGE_BROKER_ADMIN_USERNAME="$ADMIN_USER" quanedge fleet broker init \
    --bridge-username "$BRIDGE_USER" --topic-prefix "$PREFIX"
