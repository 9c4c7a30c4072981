#!/usr/bin/env bash
# One prepared GPU check of faster-chatterbox (benchmarks/gpu_check.md, benchmarks/gpu_check.py).
#
#   bash scripts/gpu-check.sh --prepare [DIR]   here, with PyPI: the project's wheel and its runtime
#                                               dependencies' wheels (not torch) into DIR (default .gpu-wheels,
#                                               git-ignored), for CPython 3.10-3.12 on manylinux x86_64
#   bash scripts/gpu-check.sh --run [DIR]       on the GPU machine (no network, a CUDA torch in python3):
#                                               installs the wheels from DIR without an index, the machine's
#                                               torch (and any package it has already) pinned, then runs the
#                                               check; JSON + markdown into $OUT (else ./gpu-check-out)
#   bash scripts/gpu-check.sh --dry-run         the same driver on CPU with the small random checkpoint
#
# --prepare --full also takes numpy and scipy (~50 MB per Python version: over the device tool's 64 MiB,
# so by default they stay behind; the H200 image has both). Environment: PYTHON (default python3),
# GPU_CHECK_BUDGET_S (the driver's budget, default 420 s: with the install it fits in 8 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mode=${1:-}
shift || true

deps() {  # the runtime dependencies of pyproject.toml, without torch
    "$PYTHON" - <<'EOF'
import re, tomllib
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    if re.match(r"torch\b", dep) is None:
        print(dep)
EOF
}

quiet() {  # a command with pip's warnings about the missing local index folders dropped; its exit status kept
    "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

prepare() {
    local dir=${1:-.gpu-wheels} full=${2:-}
    mkdir -p "$dir"
    rm -f "$dir"/*.whl
    # the project itself, and the sdist-only dependencies (docopt, for num2words) built into wheels here
    quiet "$PYTHON" -m pip wheel -q --no-deps -w "$dir" . docopt
    mapfile -t reqs < <(deps)
    for v in 3.10 3.11 3.12; do
        quiet "$PYTHON" -m pip download -q --only-binary=:all: --find-links "$dir" --implementation cp --python-version "$v" \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux1_x86_64 -d "$dir" "${reqs[@]}"
    done
    if [ "$full" != "--full" ]; then
        rm -f "$dir"/numpy-*.whl "$dir"/scipy-*.whl
    fi
    echo "wheels in $dir: $(ls "$dir" | wc -l) files, $(du -sh "$dir" | cut -f1) ($(du -sb "$dir" | cut -f1) bytes)"
}

install() {  # into the machine's python3, its own packages pinned; else into a --target folder
    local dir=${1:-.gpu-wheels}
    [ -d "$dir" ] || { echo "gpu-check: no wheel folder $dir: run 'bash scripts/gpu-check.sh --prepare' where PyPI is reachable and carry it" >&2; exit 2; }
    "$PYTHON" -c 'import torch' 2>/dev/null || { echo "gpu-check: $PYTHON has no torch (never installed by this script)" >&2; exit 2; }
    local pins=/tmp/gpu-check-constraints.txt
    "$PYTHON" - >"$pins" <<'EOF'
import importlib.metadata as md
for name in ["torch", "numpy", "scipy", "safetensors", "tokenizers", "huggingface_hub", "tqdm", "soundfile", "soxr",
             "num2words", "sentencex", "pyloudnorm", "cffi", "packaging", "filelock", "fsspec", "pyyaml", "requests",
             "typing_extensions", "httpx", "hf_xet"]:
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
EOF
    echo "gpu-check: pinned from the machine: $(tr '\n' ' ' <"$pins")" >&2
    local wheel
    wheel=$(ls "$dir"/faster_chatterbox-*.whl | head -1)
    if ! "$PYTHON" -m pip install -q --no-index --no-cache-dir --find-links "$dir" -c "$pins" "$wheel"; then
        echo "gpu-check: installing into $PYTHON's environment failed; trying --target /tmp/gpu-check-site" >&2
        # only what is missing (pip --target ignores installed packages, so it cannot resolve against them)
        local missing
        missing=$("$PYTHON" - "$dir" <<'EOF'
import importlib.metadata as md, pathlib, sys
have = {d.metadata["Name"].lower().replace("-", "_") for d in md.distributions()}
print(" ".join(sorted({p.name.split("-")[0] for p in pathlib.Path(sys.argv[1]).glob("*.whl")
                       if p.name.split("-")[0].lower() not in have})))
EOF
)
        # shellcheck disable=SC2086
        "$PYTHON" -m pip install -q --no-index --no-deps --no-cache-dir --find-links "$dir" --target /tmp/gpu-check-site $missing
        export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
    fi
}

case "$mode" in
    --prepare)
        prepare "${1:-.gpu-wheels}" "${2:-}" ;;
    --run)
        t0=$(date +%s)
        install "${1:-.gpu-wheels}"
        echo "gpu-check: installed in $(( $(date +%s) - t0 )) s" >&2
        out=${OUT:-gpu-check-out}
        mkdir -p "$out"
        # the checked-out source first: the corpus chapter is read from the repo (bench.chapter_text)
        budget=${GPU_CHECK_BUDGET_S:-420}
        # SIGINT 60 s past the budget (a section that overran it): the driver saves what it has and stops
        PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 timeout -s INT $((budget + 60)) \
            "$PYTHON" benchmarks/gpu_check.py --out "$out" --budget-s "$budget" 2>&1 | tee "$out/gpu_check.log"
        ;;
    --dry-run)
        out=${OUT:-gpu-check-out}
        PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" benchmarks/gpu_check.py --dry-run --out "$out" "$@" ;;
    *)
        echo "usage: bash scripts/gpu-check.sh --prepare [DIR] [--full] | --run [DIR] | --dry-run" >&2
        exit 2 ;;
esac
