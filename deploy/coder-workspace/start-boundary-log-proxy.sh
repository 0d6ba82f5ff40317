#!/usr/bin/env bash
# Starts boundary-log-proxy inside a Coder workspace, before boundary, forwarding to
# coderd over the Agent API with the workspace agent's own URL and token. Returns once
# the proxy accepts connections (exit 0), or prints why not (exit 1).
#
# Run it from the template, before any session that starts boundary, e.g.:
#
#   resource "coder_script" "boundary_log_proxy" {
#     agent_id           = coder_agent.main.id
#     display_name       = "boundary-log-proxy"
#     run_on_start       = true
#     start_blocks_login = true
#     script             = file("${path.module}/start-boundary-log-proxy.sh")
#   }
#
# and give boundary (not the agent: it reads the same variable for its own built-in
# proxy) the socket path in the environment it starts in:
#
#   export CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH="$HOME/.boundary-log-proxy/boundary-audit.sock"
#
# Settings (environment): BOUNDARY_LOG_PROXY_BIN (default: boundary-log-proxy on PATH),
# BOUNDARY_LOG_PROXY_DIR (default: ~/.boundary-log-proxy; holds the socket and the log),
# BOUNDARY_LOG_PROXY_SOCKET (default: $BOUNDARY_LOG_PROXY_DIR/boundary-audit.sock; give
# boundary the same path), BOUNDARY_LOG_PROXY_METRICS_ADDR (default: 127.0.0.1:9464),
# BOUNDARY_LOG_PROXY_LOG_FORMAT (default: json). Any other BOUNDARY_LOG_PROXY_*
# variable reaches the proxy as its flag (see serve --help).
set -euo pipefail

bin=${BOUNDARY_LOG_PROXY_BIN:-boundary-log-proxy}
dir=${BOUNDARY_LOG_PROXY_DIR:-$HOME/.boundary-log-proxy}
metrics=${BOUNDARY_LOG_PROXY_METRICS_ADDR:-127.0.0.1:9464}
socket=${BOUNDARY_LOG_PROXY_SOCKET:-$dir/boundary-audit.sock}
log_format=${BOUNDARY_LOG_PROXY_LOG_FORMAT:-json}
log=$dir/proxy.log

# The proxy reads these itself (its flags and BOUNDARY_LOG_PROXY_* variables win);
# checked here so a template mistake shows in the script's output, not only in the log.
if [ -z "${CODER_AGENT_URL:-}${BOUNDARY_LOG_PROXY_CODER_URL:-}" ]; then
  echo "start-boundary-log-proxy: CODER_AGENT_URL is not set: run this from the workspace agent" >&2
  exit 1
fi
if [ -z "${CODER_AGENT_TOKEN:-}${CODER_AGENT_TOKEN_FILE:-}${BOUNDARY_LOG_PROXY_AGENT_TOKEN:-}${BOUNDARY_LOG_PROXY_AGENT_TOKEN_FILE:-}" ]; then
  echo "start-boundary-log-proxy: no agent token (CODER_AGENT_TOKEN or CODER_AGENT_TOKEN_FILE)" >&2
  exit 1
fi
# As the proxy judges it: a CODER_AGENT_TOKEN set but empty is a token given (and
# refused as empty), not a fall-back to CODER_AGENT_TOKEN_FILE.
if [ -n "${CODER_AGENT_TOKEN+set}" ] && [ -z "$CODER_AGENT_TOKEN" ] \
  && [ -z "${BOUNDARY_LOG_PROXY_AGENT_TOKEN:-}${BOUNDARY_LOG_PROXY_AGENT_TOKEN_FILE:-}" ]; then
  echo "start-boundary-log-proxy: CODER_AGENT_TOKEN is set but empty: unset it to use CODER_AGENT_TOKEN_FILE" >&2
  exit 1
fi

install -d -m 0700 "$dir"
# Run twice (a start script re-run, an agent restart): a proxy already serving the
# socket holds its lock file; leave it (and its log) alone.
if [ -S "$socket" ] && command -v flock >/dev/null 2>&1 \
  && ! flock -n "$socket.lock" true 2>/dev/null; then
  echo "boundary-log-proxy already serves $socket (it holds $socket.lock); log $log"
  exit 0
fi
# The log is appended to: a restart keeps what the previous proxy said.
from=1
if [ -f "$log" ]; then
  from=$(($(wc -c <"$log") + 1))
fi
# The socket is given explicitly: --socket would otherwise fall back to
# CODER_AGENT_BOUNDARY_LOG_PROXY_SOCKET_PATH, which may name the agent's own socket.
nohup "$bin" serve \
  --socket "$socket" \
  --metrics-addr "$metrics" \
  --log-format "$log_format" \
  </dev/null >>"$log" 2>&1 &
pid=$!

# Whether the proxy's /healthz answers 200 (bash's /dev/tcp: no curl needed). It
# answers only once the socket listens, whatever the log level (the "listening" line
# is an info line).
healthy() {
  local host=${metrics%:*} port=${metrics##*:} status=
  host=${host#[}
  host=${host%]}
  exec 3<>"/dev/tcp/$host/$port" || return 1
  printf 'GET /healthz HTTP/1.0\r\nHost: %s\r\n\r\n' "$metrics" >&3
  IFS= read -r -t 2 status <&3 || true
  exec 3<&- 3>&-
  [[ $status == "HTTP/1."?" 200"* ]]
}

for _ in $(seq 1 100); do
  if [ -S "$socket" ] && kill -0 "$pid" 2>/dev/null && healthy 2>/dev/null; then
    echo "boundary-log-proxy (pid $pid) listens on $socket; metrics on http://$metrics/metrics; log $log"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "start-boundary-log-proxy: boundary-log-proxy exited; the end of $log:" >&2
    tail -c +"$from" "$log" | tail -n 20 >&2
    exit 1
  fi
  sleep 0.1
done
echo "start-boundary-log-proxy: no socket at $socket after 10 s; see $log" >&2
exit 1
