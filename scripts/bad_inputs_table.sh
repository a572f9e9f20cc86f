#!/usr/bin/env bash
# Run every bad-input test (API, demo, CLI, app.py flags, serving limits, the page in Chromium) and write each message
# a user got to docs/bad-inputs.md. The table is what the tests saw, not a hand-written list.
set -euo pipefail
cd "$(dirname "$0")/.."
STUDIO_BAD_INPUTS_TABLE=docs/bad-inputs.md exec .venv/bin/python -m pytest -q \
  tests/test_bad_inputs.py "tests/test_cli.py::test_bad_input_exits_2_with_the_reason" \
  "tests/test_browser.py::test_bad_input_shows_a_readable_message_in_the_page" \
  "tests/test_serving.py::test_a_request_is_capped_in_all_not_only_per_file" \
  "tests/test_serving.py::test_a_password_in_the_wrong_place_on_the_command_line_is_not_echoed" \
  "tests/test_store_faults.py::test_a_damaged_log_is_refused_by_name_and_kept" \
  "tests/test_store_faults.py::test_a_folder_this_user_cannot_write_is_not_called_damaged" \
  "tests/test_store_faults.py::test_the_cli_names_a_damaged_database_in_one_line" \
  "tests/test_disk_faults.py::test_a_run_the_disk_has_no_room_for_is_refused_before_any_row" \
  "tests/test_cancel.py::test_cancel_stops_this_sessions_generation_and_an_abandoned_waiter_never_runs" "$@"
