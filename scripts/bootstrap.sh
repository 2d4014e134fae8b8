#!/usr/bin/env bash
# Install everything kms-broker needs on a Debian machine, idempotently.
#   scripts/bootstrap.sh          runtime: SoftHSM2 + the Python package
#   scripts/bootstrap.sh --test   also the test servers (PostgreSQL, MariaDB + hashicorp plugin, slapd, HAProxy in
#                                 front of the cluster tests' broker nodes), wrk for the HTTP benchmarks, Debian's
#                                 Chromium for the console's browser tests (Playwright drives /usr/bin/chromium: its
#                                 own browser download is not used) and the test extras
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

PY=${KMSB_PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

apt_pkgs=(softhsm2 opensc)
if [ "$want_test" = 1 ]; then
  apt_pkgs+=(postgresql mariadb-server mariadb-client mariadb-plugin-hashicorp-key-management slapd ldap-utils chromium
            haproxy wrk)
fi

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Do not let package scripts start system daemons: tests run their own instances on free ports.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

extras=""
[ "$want_test" = 1 ] && extras="[test]"
stamp=".bootstrap-stamp$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing Python package kms-broker$extras"
  "$PY" -m pip install -q --disable-pip-version-check -e ".$extras"
  touch "$stamp"
fi
