#!/usr/bin/env bash
# Build localstack/.venv (LocalStack in host mode) from localstack/requirements.txt on Python 3.13.
# Rebuilds only when the venv is missing or requirements.txt is newer than its stamp; silent when up to date.
# Python: $KMSB_LOCALSTACK_PYTHON, else $(pyenv root)/versions/3.13.0/bin/python, else python3.13 on PATH.
# Exits non-zero with the reason when no Python 3.13 can be found or the install fails.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
req="$here/requirements.txt"
stamp="$venv/.requirements-stamp"

fail() { echo "localstack/setup-venv.sh: $*" >&2; exit 1; }

up_to_date() { [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ ! "$req" -nt "$stamp" ]; }
up_to_date && exit 0

find_python() {
  local candidates=()
  [ -n "${KMSB_LOCALSTACK_PYTHON:-}" ] && candidates+=("$KMSB_LOCALSTACK_PYTHON")
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)/versions/3.13.0/bin/python")
  fi
  command -v python3.13 >/dev/null 2>&1 && candidates+=("$(command -v python3.13)")
  local c
  for c in "${candidates[@]}"; do
    if [ -x "$c" ] && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

# One builder at a time (parallel test sessions may call this together).
exec 9>"$here/.venv.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi
up_to_date && exit 0

py="$(find_python)" || fail "no Python 3.13 found: LocalStack (localstack-core 2026.3.0) needs it. Looked for \
\$KMSB_LOCALSTACK_PYTHON, \$(pyenv root)/versions/3.13.0/bin/python and python3.13 on PATH. \
Install one, e.g. 'pyenv install 3.13.0'."

echo "localstack/setup-venv.sh: building $venv with $py (takes about a minute)" >&2
rm -rf "$venv"
"$py" -m venv "$venv" || fail "'$py -m venv $venv' failed"
log="$(mktemp)"
if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >"$log" 2>&1; then
  grep -v '^WARNING: Location' "$log" | tail -30 >&2
  rm -f "$log"
  fail "pip install -r $req failed (output above)"
fi
rm -f "$log"
"$venv/bin/python" -c 'import localstack.runtime.main' || fail "the venv was built but localstack does not import"
touch "$stamp"
echo "localstack/setup-venv.sh: ready" >&2
