#!/usr/bin/env bash
# One-time setup on a fresh machine: poppler (system package), a virtualenv,
# pagerag and its Python dependencies. Idempotent: rerunning is cheap.
#
#   scripts/setup.sh          runtime: poppler-utils + pagerag[cpu,langchain]
#   scripts/setup.sh --dev    also test tools (pytest, langchain-tests, testcontainers,
#                             onnx for the stand-in model), qpdf (tests build AES-256
#                             encrypted PDFs with it) and docker-compose (v1, used only
#                             to validate docker-compose.yml without an engine)
#
# GPU machines: PAGERAG_EXTRA=gpu scripts/setup.sh installs fastembed-gpu instead
# of fastembed (the two must never be installed together).
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1
venv="${VENV:-.venv}"
extra="${PAGERAG_EXTRA:-cpu}"
python="${PYTHON:-python3}"

need_apt=()
command -v pdftoppm >/dev/null 2>&1 || need_apt+=(poppler-utils)
if [ "$dev" = 1 ]; then
  command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
  command -v qpdf >/dev/null 2>&1 || need_apt+=(qpdf)
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing ${need_apt[*]} with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
if [ "$dev" = 1 ]; then
  "$venv/bin/pip" install -q -e ".[$extra,langchain,testing,dev]"
else
  "$venv/bin/pip" install -q -e ".[$extra,langchain]"
fi
echo "setup: done ($("$venv/bin/python" --version), poppler $(pdftoppm -v 2>&1 | head -1 | awk '{print $3}'))"
