#!/usr/bin/env bash
# A three-node Ray cluster on this machine, shaped like the production one, plus an
# S3-protocol server (moto) on 127.0.0.1:
#   head       no work beyond the job drivers (ZS_HEAD_CPUS, default 1), dashboard + Jobs API
#   extract    a worker node offering {"extract_worker": 1}  (extract.resource_label)
#   train      a worker node offering {"train_worker": 1}    (train.resource_label)
# Every node gets its own ports and its own Ray temp folder (nodes sharing one would unpack job
# working dirs over each other, under a running job); all of them live under one state folder,
# which is how infra/local/stop_cluster.sh finds (and stops) this cluster and nothing else.
#
# Usage: infra/local/start_cluster.sh [STATE_DIR]        (default /tmp/zeroseg-cluster)
# Then:  source STATE_DIR/cluster.env
#        zeroseg submit run --config jobs/demo.yaml storage.root=s3://zeroseg/demo --wait
# Stop:  infra/local/stop_cluster.sh STATE_DIR
#
# Settings (environment): ZS_HEAD_CPUS, ZS_EXTRACT_CPUS, ZS_TRAIN_CPUS (default 1 each),
# ZS_S3_BUCKET (default zeroseg; empty: no S3 server), ZS_VENV (default .venv).
# Token authentication is on: the token is $RAY_AUTH_TOKEN when set, else a new random one,
# kept in STATE_DIR/auth_token (mode 600) and passed to the nodes by path, never printed.
# Storage credentials are the usual AWS_* variables of this shell (for the local S3 server any
# non-empty pair works; defaults are set when none are given). They stay in the nodes'
# environment and are never written to STATE_DIR.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
STATE="$(mkdir -p "${1:-/tmp/zeroseg-cluster}" && cd "${1:-/tmp/zeroseg-cluster}" && pwd)"
VENV="${ZS_VENV:-$REPO/.venv}"
PY="$VENV/bin/python"
RAY="$VENV/bin/ray"
BUCKET="${ZS_S3_BUCKET-zeroseg}"
if [ -e "$STATE/cluster.env" ]; then
  echo "a cluster already uses $STATE (stop it with infra/local/stop_cluster.sh $STATE)" >&2
  exit 1
fi

# Free ports for everything a node binds by default to a fixed port, so that this cluster
# never collides with another Ray on the machine.
read -r GCS DASH CLIENT S3 AGENT_H AGENT_E AGENT_T < <("$PY" - <<'PY'
import socket
socks = [socket.socket() for _ in range(7)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks:
    s.close()
PY
)

umask 077
if [ -n "${RAY_AUTH_TOKEN:-}" ]; then
  printf '%s' "$RAY_AUTH_TOKEN" > "$STATE/auth_token"
else
  "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$STATE/auth_token"
fi
umask 022
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token"
unset RAY_AUTH_TOKEN RAY_ADDRESS
export PATH="$VENV/bin:$PATH" RAY_USAGE_STATS_ENABLED=0
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-zeroseg-local}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-zeroseg-local-secret}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"

if [ -n "$BUCKET" ]; then
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3" > "$STATE/s3.log" 2>&1 &
  echo $! > "$STATE/s3.pid"
  export AWS_ENDPOINT_URL="http://127.0.0.1:$S3"
  for _ in $(seq 50); do
    "$PY" -c "import urllib.request; urllib.request.urlopen('$AWS_ENDPOINT_URL')" 2>/dev/null && break
    sleep 0.2
  done
  "$PY" -c "import boto3; boto3.client('s3').create_bucket(Bucket='$BUCKET')"
fi

"$RAY" start --head --node-ip-address=127.0.0.1 --port="$GCS" \
  --dashboard-host=127.0.0.1 --dashboard-port="$DASH" --ray-client-server-port="$CLIENT" \
  --dashboard-agent-listen-port="$AGENT_H" --num-cpus="${ZS_HEAD_CPUS:-1}" \
  --temp-dir="$STATE/ray-head" --disable-usage-stats > "$STATE/head.log" 2>&1
"$RAY" start --address="127.0.0.1:$GCS" --node-ip-address=127.0.0.1 \
  --dashboard-agent-listen-port="$AGENT_E" --num-cpus="${ZS_EXTRACT_CPUS:-1}" \
  --resources='{"extract_worker": 1}' --temp-dir="$STATE/ray-extract" > "$STATE/extract.log" 2>&1
"$RAY" start --address="127.0.0.1:$GCS" --node-ip-address=127.0.0.1 \
  --dashboard-agent-listen-port="$AGENT_T" --num-cpus="${ZS_TRAIN_CPUS:-1}" \
  --resources='{"train_worker": 1}' --temp-dir="$STATE/ray-train" > "$STATE/train.log" 2>&1

{
  echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASH"
  echo "export RAY_AUTH_MODE=token"
  echo "export RAY_AUTH_TOKEN_PATH=$STATE/auth_token"
  [ -n "$BUCKET" ] && echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$S3"
  echo "ZS_GCS_ADDRESS=127.0.0.1:$GCS"
} > "$STATE/cluster.env"
echo "Ray cluster up: head + extract_worker node + train_worker node (dashboard" \
  "http://127.0.0.1:$DASH)${BUCKET:+, S3 server http://127.0.0.1:$S3 with bucket $BUCKET}."
echo "Use it: source $STATE/cluster.env; stop it: infra/local/stop_cluster.sh $STATE"
