#!/usr/bin/env bash
# Installs upstream Chatterbox (PyPI chatterbox-tts 0.1.7), the parity oracle of the tests and of
# `faster-chatterbox bench --compare-upstream`, into its own virtual environment: .oracle-venv at the
# repository root, or FASTER_CHATTERBOX_ORACLE_VENV. It never enters the project's environment.
# The venv sees the project environment's packages (torch, numpy, faster_chatterbox itself) after its
# own, so it installs only what upstream adds, and what it installs shadows nothing outside it.
set -euo pipefail
PY=${PYTHON:-python3}
venv=${FASTER_CHATTERBOX_ORACLE_VENV:-$(cd "$(dirname "$0")/.." && pwd)/.oracle-venv}

$PY -m venv "$venv"
OPY=$venv/bin/python
site=$($OPY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# Not `venv --system-site-packages`: from a project environment that is itself a venv, that would add the
# base interpreter's packages, not the project's. This .pth adds the project's site directories (and runs
# their .pth files, so an editable faster_chatterbox imports) behind the venv's own.
$PY - > "$site/project-environment.pth" <<'PYTHON'
import os, site
dirs = ([site.getusersitepackages()] if site.ENABLE_USER_SITE else []) + site.getsitepackages()
print("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs if os.path.isdir(d)))
PYTHON
if $PY -c "import chatterbox" 2>/dev/null; then  # pip in the venv would count these as installed already
    echo "note: the project environment still holds the oracle of an older setup; remove it with: $PY -m pip" \
        "uninstall chatterbox-tts s3tokenizer resemble-perth transformers diffusers librosa conformer torchaudio" >&2
fi

torch_version=$($OPY -c "import torch; print(torch.__version__.split('+')[0])")
constraints=$(mktemp)
echo "torch==${torch_version}" > "$constraints"
pip_install() { $OPY -m pip install -q --disable-pip-version-check -c "$constraints" "$@"; }

# The oracle and two of its pieces, without their pinned dependency trees.
pip_install --no-deps chatterbox-tts==0.1.7 s3tokenizer==0.3.0 resemble-perth==1.0.1
# What upstream imports, at versions shown to work with torch 2.13 on CPU.
pip_install transformers==5.2.0 diffusers==0.29.0 librosa==0.11.0 conformer==0.3.2 \
    omegaconf pyloudnorm einops onnx "setuptools<81" pykakasi==2.3.0
# Chatterbox-Flash's reference (block-diffusion T3 over chatterbox-tts; its torch SDPA engine needs nothing
# more, its text normalisation is pure stdlib).
pip_install --no-deps chatterbox-flash==0.1.0
# torchaudio has no CPU build for this torch: install it without its compiled libraries;
# the pure-Python parts upstream uses (kaldi fbank, Resample) then import and work.
pip_install --no-deps torchaudio==2.11.0
rm -f "$site"/torchaudio/lib/*.so
$OPY -c "import chatterbox.tts, chatterbox_flash.tts, perth, torchaudio; print('oracle ready in $venv: chatterbox-tts', __import__('importlib.metadata').metadata.version('chatterbox-tts'))"
