#!/usr/bin/env bash
# Run only the embedded Temporal dev server (Web UI on :8233), state in .data/temporal.db.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/videogen temporal --data-dir "${VIDEOGEN_DATA_DIR:-.data}" "$@"
