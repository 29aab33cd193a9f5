#!/usr/bin/env bash
# Python 3.11 (and venv) on the CUDA base, Ubuntu 22.04, from the deadsnakes PPA: the
# default Python base of both Dockerfiles. A base that already has python3.11 (the local
# Debian 12 base of `make image-test`) skips this stage entirely via PYTHON_BASE.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends ca-certificates gnupg software-properties-common
add-apt-repository -y ppa:deadsnakes/ppa
apt-get install -y --no-install-recommends python3.11 python3.11-venv
apt-get purge -y --auto-remove gnupg software-properties-common
rm -rf /var/lib/apt/lists/*
