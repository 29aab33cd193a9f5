#!/usr/bin/env bash
# The build stage of both Dockerfiles.
#   build-venv.sh lock LOCK              /opt/venv from one lock file (requirements/*.lock)
#   build-venv.sh projects LOCK DIR...   then the first-party distributions in DIR...
# sagemaker-training ships only as a source distribution with a C extension, so `lock`
# installs the compiler and Python headers here; the final stages copy /opt/venv alone and
# never see them. --no-deps: the lock is the whole closure (requirements/lock.py), and
# `pip check` fails the build if it is not, except for what the lock says it omits on
# purpose ("# omitted: NAME reason").
set -euo pipefail
mode="${1:-}" lock="${2:-}"
if [ -z "$lock" ] || { [ "$mode" != lock ] && [ "$mode" != projects ]; }; then
    echo "usage: build-venv.sh lock LOCK | build-venv.sh projects LOCK DIR..." >&2
    exit 64
fi
shift 2
export DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "$mode" = lock ]; then
    apt-get update
    apt-get install -y --no-install-recommends gcc libc6-dev python3.11-dev
    rm -rf /var/lib/apt/lists/*
    python3.11 -m venv /opt/venv
    /opt/venv/bin/pip install --no-deps --require-virtualenv -r "$lock"
else
    /opt/venv/bin/pip install --no-deps --no-build-isolation --require-virtualenv "$@"
fi
problems="$(/opt/venv/bin/pip check 2>&1 || true)"
problems="$(grep -v '^No broken requirements found' <<<"$problems" || true)"
for name in $(sed -n 's/^# omitted: \([^ ]*\).*/\1/p' "$lock"); do
    problems="$(grep -v "requires $name, which is not installed" <<<"$problems" || true)"
done
if [ -n "$problems" ]; then
    echo "pip check: $problems" >&2
    exit 1
fi
