#!/usr/bin/env bash
# Set up pytest-fuselab on a Debian host, as root: host packages, a Python environment in
# .venv, and the default guest image (cached under ~/.cache/fuselab; a warm run is quick).
set -euo pipefail
cd "$(dirname "$0")"

if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/fuselab setup
.venv/bin/fuselab image build
