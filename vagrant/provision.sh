#!/usr/bin/env bash
# Provision a Debian/Ubuntu machine (the Vagrant VM, or any host) with rlguard:
#
#   1. scripts/setup.sh --test       packages, kernel headers, tracefs, cgroup v2, venv
#   2. rlguard service install       unit, /etc/rlguard/rlguard.toml, the rlguard group;
#                                    enabled and started when systemd is PID 1
#   3. rlguard check                 preflight, including a real load of the probes
#   4. rlguard demo                  the incident (reverse SSH tunnel + miner), all
#                                    events and alerts to /var/log/rlguard/demo.ndjson
#
# Usage, as root:  RLGUARD_DIR=/path/to/checkout vagrant/provision.sh
# RLGUARD_DIR defaults to /opt/rlguard, where the Vagrantfile syncs the repo
# (Vagrant runs a copy of this script from /tmp, so it cannot find the
# checkout from its own path).
#
# Idempotent: a rerun installs nothing new, keeps the config, rewrites the
# unit, restarts the service if it was running (to pick up new code) and
# replaces the demo output. Any failing step stops the script non-zero.
set -euo pipefail

readonly RLGUARD_DIR=${RLGUARD_DIR:-/opt/rlguard}
readonly RLGUARD=$RLGUARD_DIR/.venv/bin/rlguard
readonly UNIT=rlguard.service
readonly DEMO_OUT=/var/log/rlguard/demo.ndjson

log() { printf '[provision] %s\n' "$*"; }
die() {
    printf '[provision] ERROR: %s\n' "$*" >&2
    exit 1
}

# The same test as monitor/service/systemd.py uses to decide whether to start the unit.
systemd_running() { [[ -d /run/systemd/system ]]; }

service_active() { systemd_running && systemctl is-active --quiet "$UNIT"; }

# Rule ids of the alerts in an NDJSON file, one line, e.g. "RLG-MIN-001 RLG-TUN-001".
alert_rules() {
    grep -o '"rule":{"id":"[A-Z0-9-]*"' "$1" | sed 's/.*"id":"//; s/"$//' | sort -u |
        tr '\n' ' ' | sed 's/ $//' || true
}

# One "command   what it shows" line, the commands aligned.
hint() { printf '[provision]   %-50s %s\n' "$1" "$2"; }

where_to_look() {
    local rules
    rules=$(alert_rules "$DEMO_OUT")
    log "done. Where to look:"
    if service_active; then
        hint "journalctl -u rlguard -f" "the service's NDJSON stream (the installed config"
        hint "" "writes to stdout: [output] path = \"-\" in /etc/rlguard/rlguard.toml)"
        hint "systemctl status rlguard" "state, watchdog, restarts"
    else
        log "  systemd is not PID 1 here: $UNIT is installed but not running."
        hint "sudo $RLGUARD run" "run the monitor by hand (NDJSON on stdout)"
        hint "journalctl -u rlguard" "where the service's stream goes under systemd"
    fi
    hint "$DEMO_OUT" "every event and alert of the demo"
    hint "" "(alerts: ${rules:-none})"
    hint "grep '\"kind\":\"alert\"' $DEMO_OUT" "the demo's alert lines alone"
    hint "sudo $RLGUARD rules" "what each rule means"
}

main() {
    ((EUID == 0)) || die "must run as root (it installs packages and loads eBPF programs)"
    [[ -f $RLGUARD_DIR/scripts/setup.sh ]] ||
        die "no rlguard checkout at $RLGUARD_DIR (set RLGUARD_DIR to the repository root)"
    cd "$RLGUARD_DIR"

    log "setting up $RLGUARD_DIR (scripts/setup.sh --test)"
    bash scripts/setup.sh --test

    # `service install` enables and starts the unit only when it is not running
    # yet; a rerun after new code arrived must restart it to load that code.
    local was_active=0
    if service_active; then
        was_active=1
    fi
    log "installing the service ($RLGUARD service install)"
    "$RLGUARD" service install
    if ((was_active)); then
        log "restarting $UNIT (it was running before this provisioning)"
        systemctl restart "$UNIT"
    fi

    log "checking the host ($RLGUARD check)"
    "$RLGUARD" check

    log "staging the incident ($RLGUARD demo --output $DEMO_OUT)"
    # The sink appends: start from an empty file so it holds this run only.
    rm -f "$DEMO_OUT"
    "$RLGUARD" demo --output "$DEMO_OUT"

    where_to_look
}

main "$@"
