#!/usr/bin/env bash
# Everything a fresh machine needs: Debian packages (emoji font, Unicode emoji names, a C++ compiler for
# torch.compile, Chromium for the browser tests) and a virtual environment in .venv with the pinned Python packages. Safe to run again:
# it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA_REQ="${1:-requirements.txt}"

DEBS="fonts-noto-color-emoji unicode-data g++"  # g++: torch.compile's inductor backend builds C++ on CPU
case "$EXTRA_REQ" in *test*) DEBS="$DEBS chromium" ;; esac  # the browser tests' Chromium; the studio needs none
missing=""
for pkg in $DEBS; do dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -r "$EXTRA_REQ" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, diffusers, transformers, gradio; print('studio environment ready: torch', torch.__version__, '| diffusers', diffusers.__version__)"
