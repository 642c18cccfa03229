#!/usr/bin/env bash
# Pulseboard, VictoriaMetrics and InfluxDB 1.x side by side on this machine (see main.rs):
# installs the two others from Debian's packages if they are missing, then runs the bench.
#   benches/compare/run.sh                     # 10 000 000 points, 10 000 series
#   COMPARE_POINTS=2000000 benches/compare/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
missing=()
command -v victoria-metrics >/dev/null 2>&1 || missing+=(victoria-metrics)
command -v influxd >/dev/null 2>&1 || missing+=(influxdb)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  echo "installing ${missing[*]} (Debian packages)" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The packages do not start services here (no systemd in containers); if yours did, they
# listen on their default ports and do not disturb the bench, which starts its own.
exec cargo bench --bench compare
