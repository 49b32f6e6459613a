#!/usr/bin/env bash
# Installs the real services the integration tests start on loopback. Idempotent.
#   .test-services/bin/moto_server   an S3 protocol server (moto, from PyPI), for the
#                                    remote-cache tests (not committed)
#   slurmctld, slurmd, sbatch, munge a single-node Slurm cluster, for the Slurm executor tests
#                                    (Debian packages; the tests start and stop it themselves)
# The tests look for moto_server there, then at $HONE_TEST_MOTO_SERVER, then on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v slurmctld >/dev/null || [ -x /usr/sbin/slurmctld ] || missing+=(slurmctld)
command -v slurmd >/dev/null || [ -x /usr/sbin/slurmd ] || missing+=(slurmd)
command -v sbatch >/dev/null || missing+=(slurm-client)
command -v munged >/dev/null || [ -x /usr/sbin/munged ] || missing+=(munge)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing: ${missing[*]}; install them (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

if [ -x .test-services/bin/moto_server ]; then
  echo ".test-services/: already installed"
else
  python3 -m venv .test-services
  .test-services/bin/python -m pip install --quiet --disable-pip-version-check 'moto[server]==5.1.*'
  .test-services/bin/moto_server --help >/dev/null
  echo ".test-services/bin/moto_server: installed"
fi
echo "slurm: $(slurmctld -V)"
