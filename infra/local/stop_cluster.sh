#!/usr/bin/env bash
# Stop the cluster that infra/local/start_cluster.sh started in STATE_DIR, and only that one:
# every process whose command line names this cluster's own folder, plus its S3 server.
# (`ray stop` would stop every Ray on the machine.)
# Usage: infra/local/stop_cluster.sh [STATE_DIR]         (default /tmp/zeroseg-cluster)
set -uo pipefail
STATE="$(cd "${1:-/tmp/zeroseg-cluster}" 2>/dev/null && pwd)" || { echo "no cluster at ${1:-/tmp/zeroseg-cluster}"; exit 0; }
mine() { pgrep -f -- "$STATE/ray" || true; }
pids="$(mine)"
[ -n "$pids" ] && kill $pids 2>/dev/null
for _ in $(seq 50); do
  [ -z "$(mine)" ] && break
  sleep 0.2
done
pids="$(mine)"
[ -n "$pids" ] && kill -9 $pids 2>/dev/null
if [ -f "$STATE/s3.pid" ]; then
  kill "$(cat "$STATE/s3.pid")" 2>/dev/null
  rm -f "$STATE/s3.pid"
fi
rm -f "$STATE/cluster.env"
echo "stopped the cluster in $STATE"
