#!/usr/bin/env bash
# Run every bad-input test (API, demo, CLI, app.py flags, serving limits, the page in Chromium) and write each message
# a user got to docs/bad-inputs.md. The table is what the tests saw, not a hand-written list.
set -euo pipefail
cd "$(dirname "$0")/.."
STUDIO_BAD_INPUTS_TABLE=docs/bad-inputs.md exec .venv/bin/python -m pytest -q \
  tests/test_bad_inputs.py "tests/test_cli.py::test_bad_input_exits_2_with_the_reason" \
  "tests/test_browser.py::test_bad_input_shows_a_readable_message_in_the_page" \
  "tests/test_serving.py::test_a_request_is_capped_in_all_not_only_per_file" \
  "tests/test_serving.py::test_a_password_in_the_wrong_place_on_the_command_line_is_not_echoed" "$@"
