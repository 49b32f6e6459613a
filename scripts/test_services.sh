#!/usr/bin/env bash
# Installs the real services the integration tests start on loopback, into .test-services/
# (not committed). Idempotent: does nothing when they are already there.
#   .test-services/bin/moto_server   an S3 protocol server (moto), for the remote-cache tests
# The tests look for it there, then at $HONE_TEST_MOTO_SERVER, then on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .test-services/bin/moto_server ]; then
  echo ".test-services/: already installed"
  exit 0
fi
python3 -m venv .test-services
.test-services/bin/python -m pip install --quiet --disable-pip-version-check 'moto[server]==5.1.*'
.test-services/bin/moto_server --help >/dev/null
echo ".test-services/bin/moto_server: installed"
