#!/usr/bin/env bash
# Run the whole test suite. Installs everything it needs first (apt packages, the package with its test extras,
# LocalStack's own Python 3.13 venv); the tests start their own servers on free loopback ports.
#   scripts/test.sh [pytest args...]
# Two pytest-xdist workers by default (KMSB_TEST_WORKERS=0 runs serially), each test file kept on one worker
# (--dist loadfile) so a module's servers are started once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --test
bash localstack/setup-venv.sh
python3.11 -m ruff check . || python3 -m ruff check .
PY=python3.11; command -v "$PY" >/dev/null 2>&1 || PY=python3
exec "$PY" -m pytest -p no:cacheprovider -q -n "${KMSB_TEST_WORKERS:-2}" --dist loadfile "$@"
