#!/usr/bin/env bash
# Install everything (scripts/install.sh with the test requirements), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh requirements-test.txt
exec .venv/bin/python -m pytest "$@"
