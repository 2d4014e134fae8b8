#!/usr/bin/env bash
# Run the broker on its embedded default: SQLite + a SoftHSM2 token under ./var (or $KMSB_DATA_DIR).
# First run: installs what it needs, initialises the data folder and prints the root token once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
data_dir="${KMSB_DATA_DIR:-./var}"
if [ ! -f "$data_dir/broker.toml" ]; then
  kms-broker init --data-dir "$data_dir"
fi
exec kms-broker serve --data-dir "$data_dir" --bind "${KMSB_BIND:-127.0.0.1:8200}" "$@"
