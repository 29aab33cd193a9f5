#!/usr/bin/env bash
# What the serving image leaves out of core (Dockerfile.serve's build stage).
#   omit-modules.sh sources LIST DIR   delete LIST's paths, relative to DIR, before DIR is installed
#   omit-modules.sh scripts LIST BIN   after it: delete BIN's console scripts that import one of them
# LIST: one path a line, `#` comment lines (docker/serve-omits.txt). A listed path that does
# not exist fails the build, so the list cannot go stale unnoticed.
set -euo pipefail
mode="${1:-}" list="${2:-}" dir="${3:-}"
if [ -z "$dir" ] || { [ "$mode" != sources ] && [ "$mode" != scripts ]; }; then
    echo "usage: omit-modules.sh sources|scripts LIST DIR" >&2
    exit 64
fi
mapfile -t paths < <(grep -v -e '^#' -e '^[[:space:]]*$' "$list")
if [ "$mode" = sources ]; then
    for path in "${paths[@]}"; do
        rm -r "${dir:?}/$path"
    done
    exit 0
fi
# pip's console scripts import their entry point: `from dagm_defects.tracking.cli import main`.
modules="$(printf '%s\n' "${paths[@]}" | sed -e 's/\.py$//' -e 's#/#\\.#g' | paste -sd '|')"
{ grep -lE "^(from|import) ($modules)([. ]|$)" "$dir"/* || true; } | xargs -r rm -v
