#!/usr/bin/env bash
# Create kiln's environment on a fresh machine: Vulkan's software driver (lavapipe) where
# apt can install it, then a Python 3.11 virtual environment in .venv with every extra.
set -euo pipefail
cd "$(dirname "$0")"

if command -v vulkaninfo >/dev/null 2>&1 && vulkaninfo --summary >/dev/null 2>&1; then
    echo "setup: a Vulkan driver is present"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing mesa-vulkan-drivers and libvulkan1 (lavapipe, Vulkan on the CPU)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        mesa-vulkan-drivers libvulkan1 >/dev/null
else
    echo "setup: NOTE: cannot install Vulkan (needs root and apt): vulkan targets will be" \
         "reported 'skipped: no vulkan device'. Install mesa-vulkan-drivers and libvulkan1" \
         "(or a GPU driver) to validate them."
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[all]"
echo "setup: ready (.venv)"
