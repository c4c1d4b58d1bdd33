#!/usr/bin/env bash
# One-time setup on a fresh machine: poppler (system package), a virtualenv,
# pagerag and its Python dependencies. Idempotent: rerunning is cheap.
#
#   scripts/setup.sh          runtime: poppler-utils + pagerag[cpu,langchain,serve]
#                             (serve: `pagerag serve`, the HTTP API and web page)
#   scripts/setup.sh --dev    also test tools (pytest, langchain-tests, testcontainers,
#                             onnx for the stand-in model, playwright), qpdf (tests build
#                             AES-256 encrypted PDFs with it), docker-compose (v1, used only
#                             to validate docker-compose.yml without an engine) and Debian's
#                             chromium (the web page's browser test; Playwright's own browser
#                             download is not used)
#                             and pagerag[ray] (`pagerag ingest --engine ray`; its tests
#                             run on a local Ray)
#
# GPU machines: PAGERAG_EXTRA=gpu scripts/setup.sh installs fastembed-gpu instead
# of fastembed (the two must never be installed together). PAGERAG_EXTRA is read by
# this script only; pagerag's config ignores it, so it may stay exported.
#
# --dev also installs the torch backend (pagerag[torch]: colpali-engine, torch,
# torchvision; ~5 GB, a few minutes) so the tests cover it; PAGERAG_TORCH=0 leaves it
# out (those tests then skip, saying why). torch and torchvision are pinned with ===
# (exact version, no local label), which makes pip take PyPI's own builds: a local
# '+cpu' torch wheel, which some machines' pip configuration adds (it sorts above the
# plain version), cannot import PyPI's torchvision. No pip configuration is changed.
#
# pip runs only when something that decides the install changed since the last run
# (pyproject.toml, this script, the extras, the Python): the stamp is
# $VENV/.pagerag-setup-stamp. --force reinstalls anyway.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
force=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --force) force=1 ;;
    *) echo "setup: unknown option $arg (options: --dev, --force)" >&2; exit 2 ;;
  esac
done
venv="${VENV:-.venv}"
extra="${PAGERAG_EXTRA:-cpu}"
python="${PYTHON:-python3}"

need_apt=()
command -v pdftoppm >/dev/null 2>&1 || need_apt+=(poppler-utils)
if [ "$dev" = 1 ]; then
  command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
  command -v qpdf >/dev/null 2>&1 || need_apt+=(qpdf)
  [ -x /usr/bin/chromium ] || need_apt+=(chromium)
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing ${need_apt[*]} with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
runtime_spec=".[$extra,langchain,serve]"
torch_tag="+torch"
[ "${PAGERAG_TORCH:-1}" = 0 ] && torch_tag=""
torch_pins=("torch===2.13.0" "torchvision===0.28.0")
dev_spec=".[$extra,langchain,serve,testing,dev,ray]$torch_tag"
spec="$runtime_spec"
[ "$dev" = 1 ] && spec="$dev_spec"
# What decides the install; a dev install also satisfies a runtime setup.
inputs="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $("$venv/bin/python" --version 2>&1)"
stamp="$venv/.pagerag-setup-stamp"
installed="$(cat "$stamp" 2>/dev/null || true)"
if [ "$force" = 1 ] || [ ! -x "$venv/bin/pagerag" ] \
   || { [ "$installed" != "$spec $inputs" ] && [ "$installed" != "$dev_spec $inputs" ]; }; then
  rm -f "$stamp"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$venv/bin/pip" install -q -e "${spec%+torch}"
  if [ "$spec" != "${spec%+torch}" ]; then
    "$venv/bin/pip" install -q -e ".[torch]" "${torch_pins[@]}"
  fi
  echo "$spec $inputs" > "$stamp"
fi
echo "setup: done ($("$venv/bin/python" --version), poppler $(pdftoppm -v 2>&1 | head -1 | awk '{print $3}'))"
