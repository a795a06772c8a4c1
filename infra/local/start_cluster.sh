#!/usr/bin/env bash
# A Ray head on this machine for `zeroseg ... ray.address=auto` or `ray job submit`.
# Usage: infra/local/start_cluster.sh [num_cpus]     Stop with: .venv/bin/ray stop
set -euo pipefail
cd "$(dirname "$0")/../.."
CPUS="${1:-$(nproc)}"
# Token authentication is on by default for `ray start`; local development turns it off.
# The head also offers the extraction worker group's resource, so a config with
# extract.resource_label=extract_worker runs here as it would on a cluster.
RAY_AUTH_MODE=disabled .venv/bin/ray start --head --node-ip-address=127.0.0.1 \
  --num-cpus="$CPUS" --dashboard-host=127.0.0.1 --disable-usage-stats \
  --resources='{"extract_worker": 1}'
echo "Ray head up. Submit with: RAY_ADDRESS=http://127.0.0.1:8265 .venv/bin/ray job submit --working-dir . -- zeroseg run --config jobs/demo.yaml"
