#!/usr/bin/env bash
# Checks of the operator kit: alert rules and their unit tests, the Grafana dashboard,
# the systemd unit, and that all of them (and README.md) name only metrics the
# proxy exports. CI runs it from the repository root; it exits non-zero on any failure.
# A check whose tool is missing prints a SKIP line (CI installs promtool beforehand).
set -euo pipefail
cd "$(dirname "$0")/.."

UNIT=deploy/systemd/boundary-log-proxy.service
SYSUSERS=deploy/systemd/boundary-log-proxy.sysusers
DASHBOARD=deploy/grafana/boundary-log-proxy.json
METRICS=deploy/metrics.txt
# systemd-analyze security exposure, in tenths (the unit scores 1.2 with systemd 252).
MAX_EXPOSURE=20

failures=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n--- %s\n' "$*"; }
pass() { echo "ok: $*"; }
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}
skip() { echo "SKIP: $*"; }
have() { command -v "$1" >/dev/null 2>&1; }

# run DESCRIPTION COMMAND...: runs the command, shows its output, records a failure.
run() {
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

# Duration in milliseconds from the forms the unit and the proxy take: 500ms, 5s, 2m, 2min, 1h, 15.
to_ms() {
  [[ $1 =~ ^([0-9]+)(ms|s|m|min|h)?$ ]] || return 1
  local n=${BASH_REMATCH[1]}
  case ${BASH_REMATCH[2]} in
    ms) echo $((n)) ;;
    s | '') echo $((n * 1000)) ;;
    m | min) echo $((n * 60000)) ;;
    h) echo $((n * 3600000)) ;;
  esac
}

# Value of the last `Key=` line of the unit (the one systemd uses).
unit_value() { sed -n "s/^$1=//p" "$UNIT" | tail -n 1; }

step "Prometheus rules (promtool)"
if have promtool; then
  run "promtool check rules" promtool check rules deploy/prometheus/alerts.yml
  run "promtool test rules" promtool test rules deploy/prometheus/alerts_test.yml
else
  skip "promtool not installed: alert rules and their tests NOT checked (apt-get install prometheus)"
fi

step "Dashboard JSON"
if have jq; then
  run "$DASHBOARD is valid JSON (jq)" jq empty "$DASHBOARD"
elif have python3; then
  run "$DASHBOARD is valid JSON (python3)" python3 -m json.tool "$DASHBOARD" /dev/null
else
  fail "neither jq nor python3 is installed: cannot check $DASHBOARD"
fi

step "Metric names, labels, alert test coverage, dashboard structure"
if have python3; then
  run "lint_kit.py" python3 deploy/lint_kit.py --dashboard-rules "$work/dashboard-rules.yml"
  if have promtool && [ -s "$work/dashboard-rules.yml" ]; then
    run "dashboard queries parse as PromQL" promtool check rules "$work/dashboard-rules.yml"
  fi
else
  # Without python3, still catch a renamed metric: every prefixed name must be listed.
  skip "python3 not installed: labels, test coverage and dashboard structure NOT checked"
  known=$(grep -v '^#' "$METRICS" | awk 'NF { print $1 } $2 == "histogram" { print $1 "_bucket"; print $1 "_sum"; print $1 "_count" }' | sort -u)
  used=$(grep -ohE 'agent_boundary_log_proxy_[a-zA-Z0-9_]*' deploy/prometheus/*.yml "$DASHBOARD" README.md | sort -u)
  unknown=$(comm -23 <(echo "$used") <(echo "$known"))
  if [ -z "$unknown" ]; then pass "every metric name used is exported"; else fail "not exported: $unknown"; fi
fi

step "systemd unit"
# Settings that must not be lost in an edit. systemd-analyze verify only reports
# unknown or malformed lines, so the intent is checked here.
for line in \
  'NoNewPrivileges=yes' 'ProtectSystem=strict' 'ProtectHome=yes' \
  'RuntimeDirectory=boundary-log-proxy' 'StateDirectory=boundary-log-proxy' \
  'Environment=BOUNDARY_LOG_PROXY_SOCKET=/run/boundary-log-proxy/boundary-audit.sock' \
  'EnvironmentFile=/etc/boundary-log-proxy/env' \
  'Restart=on-failure' 'RestartPreventExitStatus=2' 'KillSignal=SIGTERM' \
  'ProtectKernelTunables=yes' 'ProtectKernelModules=yes' 'ProtectKernelLogs=yes' \
  'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6' \
  'SystemCallFilter=@system-service' 'SystemCallErrorNumber=EPERM' \
  'LockPersonality=yes' 'MemoryDenyWriteExecute=yes' \
  'ExecStart=/usr/local/bin/boundary-log-proxy serve'; do
  if grep -qxF "$line" "$UNIT"; then :; else fail "$UNIT lacks the line: $line"; fi
done
if grep -qE '^PrivateUsers=(yes|true|1|on|self|identity)' "$UNIT"; then
  fail "$UNIT sets PrivateUsers=: SO_PEERCRED would report boundary as the overflow uid and --allow-uid would reject it"
fi
if grep -qE '^(PrivateTmp=(yes|true|1|on))' "$UNIT" && ! unit_value 'Environment=BOUNDARY_LOG_PROXY_SOCKET' | grep -q '^/run/'; then
  fail "$UNIT: PrivateTmp=yes needs the socket outside /tmp"
fi
stop=$(unit_value TimeoutStopSec)
drain=$(unit_value 'Environment=BOUNDARY_LOG_PROXY_SHUTDOWN_TIMEOUT')
drain=${drain:-5s}
if stop_ms=$(to_ms "$stop") && drain_ms=$(to_ms "$drain"); then
  if [ "$stop_ms" -gt "$drain_ms" ]; then
    pass "TimeoutStopSec=$stop is longer than the proxy's shutdown timeout $drain"
  else
    fail "TimeoutStopSec=$stop must exceed the shutdown timeout $drain, or systemd kills the drain"
  fi
else
  fail "cannot read TimeoutStopSec='$stop' or BOUNDARY_LOG_PROXY_SHUTDOWN_TIMEOUT='$drain'"
fi
user=$(unit_value User)
group=$(unit_value Group)
if [ -n "$user" ] && [ -n "$group" ] && grep -qE "^u[[:space:]]+$user[[:space:]]" "$SYSUSERS" && grep -qE "^[ug][[:space:]]+$group[[:space:]]" "$SYSUSERS"; then
  pass "User=$user and Group=$group are created by $SYSUSERS"
else
  fail "User=$user / Group=$group are not both created by $SYSUSERS"
fi

if have systemd-analyze; then
  # verify fails on a missing ExecStart binary, so check a copy that differs only in the
  # binary's path, pointing at a stand-in executable; any message at all is a failure.
  mkdir -p "$work/unit" "$work/bin"
  cp "$(type -P true)" "$work/bin/boundary-log-proxy"
  sed "s#^ExecStart=/usr/local/bin/boundary-log-proxy#ExecStart=$work/bin/boundary-log-proxy#" \
    "$UNIT" >"$work/unit/boundary-log-proxy.service"
  if out=$(systemd-analyze verify "$work/unit/boundary-log-proxy.service" 2>&1) && [ -z "$out" ]; then
    pass "systemd-analyze verify"
  else
    printf '%s\n' "$out"
    fail "systemd-analyze verify $UNIT"
  fi
  if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
    if out=$(systemd-analyze security --offline=yes --threshold="$MAX_EXPOSURE" \
      "$work/unit/boundary-log-proxy.service" 2>&1); then
      pass "$(printf '%s\n' "$out" | grep 'Overall exposure' | sed -e 's/^→ //' -e 's/ *[^ ]*$//') (limit $MAX_EXPOSURE/10)"
    else
      printf '%s\n' "$out" | grep -E '✗|Overall' || true
      fail "systemd-analyze security: exposure above $MAX_EXPOSURE/10"
    fi
  else
    skip "systemd-analyze too old for security --offline: exposure score NOT checked"
  fi
else
  skip "systemd-analyze not installed: unit syntax NOT verified"
fi

if have systemd-sysusers; then
  mkdir -p "$work/root/etc"
  if systemd-sysusers --root="$work/root" "$PWD/$SYSUSERS" >/dev/null 2>&1 \
    && grep -q "^$user:" "$work/root/etc/passwd" && grep -q "^$group:" "$work/root/etc/group"; then
    pass "systemd-sysusers creates $user and $group"
  else
    fail "systemd-sysusers $SYSUSERS"
  fi
else
  skip "systemd-sysusers not installed: $SYSUSERS NOT applied"
fi

step "Coder workspace start script"
START=deploy/coder-workspace/start-boundary-log-proxy.sh
run "$START parses (bash -n)" bash -n "$START"
if [ -x "$START" ]; then pass "$START is executable"; else fail "$START is not executable"; fi
if have shellcheck; then
  run "shellcheck $START" shellcheck "$START"
else
  skip "shellcheck not installed: $START NOT linted (tests/coder_workspace_script.rs runs it)"
fi

echo
if [ "$failures" -ne 0 ]; then
  echo "operator kit: $failures check(s) FAILED"
  exit 1
fi
echo "operator kit: all checks passed"
