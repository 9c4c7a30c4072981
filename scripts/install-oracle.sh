#!/usr/bin/env bash
# Installs upstream Chatterbox (PyPI chatterbox-tts 0.1.7) as the parity oracle for tests.
# It is never a runtime dependency of faster-chatterbox. Torch stays pinned at the version
# already installed (a constraints file stops pip from pulling CUDA wheels).
set -euo pipefail
PY=${PYTHON:-python3}
torch_version=$($PY -c "import torch; print(torch.__version__.split('+')[0])")
constraints=$(mktemp)
echo "torch==${torch_version}" > "$constraints"
pip_install() { $PY -m pip install -q --disable-pip-version-check -c "$constraints" "$@"; }

# The oracle and two of its pieces, without their pinned dependency trees.
pip_install --no-deps chatterbox-tts==0.1.7 s3tokenizer==0.3.0 resemble-perth==1.0.1
# What upstream imports, at versions shown to work with torch 2.13 on CPU.
pip_install transformers==5.2.0 diffusers==0.29.0 librosa==0.11.0 conformer==0.3.2 \
    omegaconf pyloudnorm einops onnx "setuptools<81"
# torchaudio has no CPU build for this torch: install it without its compiled libraries;
# the pure-Python parts upstream uses (kaldi fbank, Resample) then import and work.
pip_install --no-deps torchaudio==2.11.0
site=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -f "$site"/torchaudio/lib/*.so
$PY -c "import chatterbox.tts, torchaudio; print('oracle ready: chatterbox-tts', __import__('importlib.metadata').metadata.version('chatterbox-tts'))"
