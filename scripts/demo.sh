#!/usr/bin/env bash
# Set up .venvs/demo and run the main job: `amylum train` (tiny vision-language demo on CPU).
# Extra arguments go to `amylum train`, e.g. `bash scripts/demo.sh --model.preset=tiny-valm`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_venv.sh .venvs/demo
amylum train "$@"
