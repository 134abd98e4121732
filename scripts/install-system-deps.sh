#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, only when they are missing.
set -euo pipefail
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v tini >/dev/null 2>&1 || [ -x /usr/bin/tini ] || need+=(tini)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)  # gRPC load in `make bench`
# headless Chromium renders the HTML reports in tests/integration/test_optimize_report.py
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# The Triton python backend stub (nvidia-pytriton, gateway tests) links the system libpython.
py=$("${PYTHON:-python3}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
ldconfig -p 2>/dev/null | grep "libpython$py\.so\.1\.0" >/dev/null || need+=("libpython$py")
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
