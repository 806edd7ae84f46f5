#!/usr/bin/env bash
# Install the project into .venv (idempotent) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export DVC_NO_ANALYTICS=1 DO_NOT_TRACK=1
status=0
.venv/bin/python -m pytest -q "$@" || status=$?
# pytest exits with 5 when it collected no tests; that is a failure here, never a pass.
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
fi
exit "$status"
