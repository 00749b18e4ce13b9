#!/usr/bin/env bash
# Create kiln's environment on a fresh machine: Vulkan's software driver (lavapipe) where
# apt can install it, then a Python 3.11 virtual environment in .venv with every extra.
set -euo pipefail
cd "$(dirname "$0")"

# apt packages: Vulkan's software driver where no driver is present, nginx (with its DAV
# module) which the tests start on loopback as a real shared-cache server, and chromium with
# its driver, in which the tests open the HTML report
packages=()
if command -v vulkaninfo >/dev/null 2>&1 && vulkaninfo --summary >/dev/null 2>&1; then
    echo "setup: a Vulkan driver is present"
elif dpkg -s mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1; then
    # (vulkaninfo is in vulkan-tools, which kiln does not install: ask dpkg instead of
    # installing the driver again on every run)
    echo "setup: lavapipe (mesa-vulkan-drivers) is installed"
else
    packages+=(mesa-vulkan-drivers libvulkan1)
fi
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || packages+=(nginx)
# a real headless browser for the test of build/report.html
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || packages+=(chromium-driver)
if [ ${#packages[@]} = 0 ]; then
    :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${packages[*]} with apt"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        "${packages[@]}" >/dev/null
    # the nginx package starts a server on port 80; the tests start their own
    if [[ " ${packages[*]} " == *" nginx "* ]]; then
        (service nginx stop || nginx -s stop) >/dev/null 2>&1 || true
    fi
else
    echo "setup: NOTE: cannot install ${packages[*]} (needs root and apt): without a Vulkan" \
         "driver vulkan targets are reported 'skipped: no vulkan device'; without nginx the" \
         "shared-cache tests are skipped; without chromium and chromium-driver the browser" \
         "test of build/report.html is skipped."
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' 2>/dev/null; then
    echo "setup: kiln needs Python 3.11 or newer; $PYTHON is" \
         "$("$PYTHON" --version 2>&1 || echo 'missing'): set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
if [ -x .venv/bin/python ] && [ "$(version .venv/bin/python)" != "$(version "$PYTHON")" ]; then
    echo "setup: .venv is Python $(version .venv/bin/python), not $(version "$PYTHON"): made anew"
    rm -rf .venv
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# (not --no-compile: where PYTHONDONTWRITEBYTECODE is set, as on the CI machines, every
# process would then compile torch and TensorFlow from source: the suite took half again)
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if [ "${1:-}" = "--lock" ]; then
    # the newest versions pyproject.toml allows, written to constraints.txt as the new lock
    "${pip[@]}" --upgrade -e ".[all]"
    { echo "# The versions kiln is tested with: ./setup.sh installs exactly these."
      echo "# Refreshed by ./setup.sh --lock (the newest that pyproject.toml allows)."
      .venv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check; } \
        > constraints.txt
    echo "setup: constraints.txt written"
else
    "${pip[@]}" -c constraints.txt -e ".[all]"
fi
echo "setup: ready (.venv)"
