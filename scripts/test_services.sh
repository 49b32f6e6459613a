#!/usr/bin/env bash
# Installs what the tests need besides the checkpoints (scripts/fetch_models.sh): the real
# services they start on loopback, and the system packages some of them drive. Idempotent.
#   .test-services/bin/moto_server   an S3 protocol server (moto, from PyPI), for the
#                                    remote-cache tests (not committed)
#   .test-services/bin/mlflow        an MLflow tracking server (mlflow, from PyPI), for the
#                                    `logging: { mlflow: ... }` test
#   slurmctld, slurmd, sbatch, munge a single-node Slurm cluster, for the Slurm executor tests
#                                    (Debian packages; the tests start and stop it themselves)
#   mesa-vulkan-drivers, libvulkan1  software Vulkan (lavapipe), so the wgpu backend's tests
#                                    run without a GPU (without it wgpu falls back to slow
#                                    OpenGL)
#   chromium                         headless Chromium, which renders the HTML run report in
#                                    tests/it/report.rs
# The tests look for moto_server there, then at $HONE_TEST_MOTO_SERVER, then on PATH (and for
# mlflow there, then at $HONE_TEST_MLFLOW, then on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null || missing+=(chromium)
if command -v dpkg >/dev/null; then
  dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
  dpkg -s libvulkan1 >/dev/null 2>&1 || missing+=(libvulkan1)
fi
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

[ -x .test-services/bin/python ] || python3 -m venv .test-services
if [ -x .test-services/bin/moto_server ]; then
  echo ".test-services/bin/moto_server: already installed"
else
  .test-services/bin/python -m pip install --quiet --disable-pip-version-check 'moto[server]==5.1.*'
  .test-services/bin/moto_server --help >/dev/null
  echo ".test-services/bin/moto_server: installed"
fi
if [ -x .test-services/bin/mlflow ]; then
  echo ".test-services/bin/mlflow: already installed"
else
  .test-services/bin/python -m pip install --quiet --disable-pip-version-check 'mlflow==3.17.*'
  .test-services/bin/mlflow --version >/dev/null
  echo ".test-services/bin/mlflow: installed"
fi
echo "slurm: $(slurmctld -V)"
echo "chromium: $(chromium --version 2>/dev/null || echo missing)"
