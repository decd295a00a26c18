#!/usr/bin/env bash
# The GPU check kit for the lent H200 machine, which has Python 3.12 with its own torch 2.11 + CUDA 13 but
# no package registry, and takes at most 64 MiB of files per run (scripts/README.md lists the runs).
#
#   bash scripts/gpu_kit.sh prepare            # here: the wheels the machine lacks into gpu-kit/, in parts,
#                                              #   then the exact sequence of runs with each run's size
#   bash scripts/gpu_kit.sh run stash          # there, one run per part: keep the carried part
#   bash scripts/gpu_kit.sh run train          # there: reassemble and install once, then the training and
#                                              #   loader benchmarks
#   bash scripts/gpu_kit.sh run tests          # there: the gpu-marked tests and the million-scale DRCDown
#   bash scripts/gpu_kit.sh run --dry-run      # here: every stage on the CPU against $KIT_PYTHON (a Python
#                                              #   3.12 with torch and the machine's packages, none of ours)
#
# Variables: KIT_DIR (gpu-kit), KIT_HOME (where the machine keeps files between runs: /tmp/dist_syndr-kit),
# KIT_PYTHON (python3), KIT_PART_MIB (part size, 55), OUT (results; gpu-results here).
set -uo pipefail
cd "$(dirname "$0")/.."
KIT_DIR=${KIT_DIR:-gpu-kit}
KIT_HOME=${KIT_HOME:-/tmp/dist_syndr-kit}
KIT_PYTHON=${KIT_PYTHON:-python3}
KIT_PART_MIB=${KIT_PART_MIB:-55}
TREE_LIMIT_MIB=60
# What the machine lacks (its image holds torch, numpy, scipy, timm, pyyaml, tqdm, psutil, xxhash, msgpack,
# ninja, py-cpuinfo, einops, packaging, six, pillow, scikit-image, safetensors, onnx, pytest, hypothesis).
# MLflow is left out: its tests skip there, and the checks below do not track.
KIT_WHEELS=(  # at the versions of lock/py311.txt
    webdataset wids braceexpand piq hjson pydantic pydantic_core annotated-types typing-inspection
    openpyxl et_xmlfile nvtx makefun libcst astunparse gast optree nvidia-libnvcomp-cu13 nvidia-nvimgcodec-cu13
    nvidia-nvjpeg nvidia-nvjpeg2k-cu13 nvidia-nvtiff-cu13 pytest-timeout lz4
)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
    --platform manylinux_2_34_x86_64)
IMPORTS=(deepspeed webdataset wids piq openpyxl nvidia.dali dist_syndr)

say() { echo "gpu_kit: $*"; }
mib() { echo $(( ($1 + 1048575) / 1048576 )); }
tree_bytes() { git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | paste -sd+ | bc; }

fetch_wheels() {
    local wheels=$KIT_DIR/wheels
    mkdir -p "$wheels"
    local name pinned=()
    for name in "${KIT_WHEELS[@]}" nvidia-dali-cuda130 deepspeed; do
        grep -q -i "^$name==" lock/py311.txt || { say "$name is not in lock/py311.txt"; return 1; }
    done
    for name in "${KIT_WHEELS[@]}"; do pinned+=("$(grep -i "^$name==" lock/py311.txt)"); done
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d "$wheels" "${pinned[@]}" 2>&1 | grep -v 'is ignored' || true
    if ! ls "$wheels"/deepspeed-*.whl > /dev/null 2>&1; then  # PyPI has only the sdist; the wheel is pure Python
        DS_BUILD_OPS=0 .venv/bin/python -m pip wheel --quiet --no-deps --no-build-isolation --no-binary deepspeed \
            -w "$wheels" "$(grep -o '^deepspeed==.*' lock/py311.txt)" 2>&1 | grep -v 'is ignored' || true
    fi
    local dali_dir=$KIT_DIR/dali-wheel
    mkdir -p "$dali_dir"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d "$dali_dir" "$(grep '^nvidia-dali-cuda130==' lock/py311.txt)" 2>&1 | grep -v 'is ignored' || true
}

split_payload() {  # every wheel in one tar, cut into parts that each fit one run beside the tree
    rm -rf "$KIT_DIR/parts" "$KIT_DIR/payload.tar"
    mkdir -p "$KIT_DIR/parts"
    tar -cf "$KIT_DIR/payload.tar" -C "$KIT_DIR" wheels dali-wheel || return 1
    split -b "${KIT_PART_MIB}M" -d -a 2 "$KIT_DIR/payload.tar" "$KIT_DIR/parts/part-"
    { echo "sha256=$(sha256sum "$KIT_DIR/payload.tar" | cut -d' ' -f1)"; echo "parts=$(ls "$KIT_DIR"/parts/part-* | wc -l)"
      (cd "$KIT_DIR/parts" && sha256sum part-*); } > "$KIT_DIR/manifest.txt"
    rm -f "$KIT_DIR/payload.tar"
}

print_runs() {
    local base parts i=0 size total=0 manifest_bytes stage
    base=$(tree_bytes)
    manifest_bytes=$(stat -c %s "$KIT_DIR/manifest.txt")
    mapfile -t parts < <(ls "$KIT_DIR"/parts/part-*)
    echo "runs for the device tool (the tree itself is $(mib "$base") MiB; each run must stay under $TREE_LIMIT_MIB MiB):"
    for i in "${!parts[@]}"; do
        size=$((base + $(stat -c %s "${parts[$i]}") + manifest_bytes))
        printf '  run %d: command "bash scripts/gpu_kit.sh run stash"  carry ["%s/manifest.txt", "%s"]  %d MiB\n' \
            $((i + 1)) "$KIT_DIR" "${parts[$i]}" "$(mib "$size")"
        if [ "$(mib "$size")" -ge "$TREE_LIMIT_MIB" ]; then say "run $((i + 1)) is over $TREE_LIMIT_MIB MiB"; return 1; fi
        total=$((total + size))
    done
    for stage in train tests; do
        i=$((i + 1))
        printf '  run %d: command "bash scripts/gpu_kit.sh run %s"  carry ["%s/manifest.txt"]  %d MiB\n' \
            $((i + 1)) "$stage" "$KIT_DIR" "$(mib $((base + manifest_bytes)))"
        total=$((total + base + manifest_bytes))
    done
    echo "  in all $(mib "$total") MiB over $((i + 1)) runs, one after the other while the machine is warm;"
    echo "  a run that finds $KIT_HOME gone (a cold machine) says so: start again from run 1"
}

prepare() {
    fetch_wheels || return 1
    split_payload || return 1
    say "$(ls "$KIT_DIR"/wheels/*.whl "$KIT_DIR"/dali-wheel/*.whl | wc -l) wheels, $(du -cb "$KIT_DIR"/parts/part-* | tail -1 | cut -f1) bytes in $(ls "$KIT_DIR"/parts/part-* | wc -l) parts"
    print_runs
}

# ---- on the machine

stash() {  # keep what this run carried; say what earlier runs left (files outside the tree must survive)
    mkdir -p "$KIT_HOME/parts"
    local previous=0
    [ -f "$KIT_HOME/runs.log" ] && previous=$(wc -l < "$KIT_HOME/runs.log")
    say "$previous earlier run(s) left files in $KIT_HOME"
    cp "$KIT_DIR"/manifest.txt "$KIT_HOME"/ 2>/dev/null
    cp "$KIT_DIR"/parts/part-* "$KIT_HOME/parts/" 2>/dev/null
    echo "$(date -u +%FT%TZ) $(ls "$KIT_HOME/parts" | wc -l) parts" >> "$KIT_HOME/runs.log"
    tail -1 "$KIT_HOME/runs.log"
}

assemble() {  # the wheels from the parts, checked part by part and whole against the manifest
    local wanted
    wanted=$(grep '^parts=' "$KIT_HOME/manifest.txt" | cut -d= -f2)
    (cd "$KIT_HOME/parts" && grep ' part-' ../manifest.txt | sha256sum --check --quiet) \
        || { say "parts missing or damaged: $(ls "$KIT_HOME/parts" | wc -l) of $wanted here"; return 1; }
    cat "$KIT_HOME"/parts/part-* > "$KIT_HOME/payload.tar"
    echo "$(grep '^sha256=' "$KIT_HOME/manifest.txt" | cut -d= -f2)  $KIT_HOME/payload.tar" | sha256sum --check --quiet \
        || { say "the reassembled payload does not match its sha256"; return 1; }
    mkdir -p "$KIT_HOME/wheels" && tar -xf "$KIT_HOME/payload.tar" -C "$KIT_HOME" && rm -f "$KIT_HOME/payload.tar"
    mv "$KIT_HOME"/dali-wheel/*.whl "$KIT_HOME/wheels/"
    say "reassembled from $wanted parts: $(ls "$KIT_HOME"/wheels/*.whl | wc -l) wheels"
}

use_site() {  # the kit's folder and this tree (dist_syndr itself travels as the tree) on the path
    export PYTHONPATH="$PWD:$KIT_HOME/site${PYTHONPATH:+:$PYTHONPATH}" PATH="$KIT_HOME/site/bin:$PATH"
}

install() {  # over the machine's own torch: no index, no dependencies, into a folder on PYTHONPATH
    "$KIT_PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$KIT_HOME/site" "$KIT_HOME"/wheels/*.whl || return 1
    use_site
    local module
    for module in "${IMPORTS[@]}"; do
        "$KIT_PYTHON" -c "import $module" || { say "cannot import $module"; return 1; }
    done
    "$KIT_PYTHON" -c 'import torch, deepspeed, nvidia.dali as d; print("torch", torch.__version__, "cuda", torch.version.cuda, "deepspeed", deepspeed.__version__, "dali", d.__version__)'
}

timed() {  # timed NAME SECONDS COMMAND...: one check, its log under $OUT, never longer than its budget
    local name=$1 budget=$2 start
    shift 2
    start=$(date +%s)
    timeout "$budget" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
    tail -5 "$OUT/$name.log"
}

# Device-time budget (15 minutes in all): start about 90 s, each stash run about 15 s, then stage "train"
# (at most 300 s) and stage "tests" (at most 200 s): about 11 minutes, which leaves one rerun of "tests".
checks() {  # checks STAGE DRY
    local stage=$1 dry=$2
    export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="$KIT_HOME/torch_extensions" MPLCONFIGDIR="$KIT_HOME/mpl"
    : > "$OUT/summary.txt"
    if [ "$dry" = 1 ]; then  # the CPU forms of both stages: what runs there minus the CUDA steps
        timed gpu-tests-collected 300 "$KIT_PYTHON" -m pytest -q -m gpu --collect-only -p no:cacheprovider
        timed loader-bench 600 "$KIT_PYTHON" launchers/bench.py loader --quick --out "$OUT/loader.md"
        timed reshape-million-bench 600 "$KIT_PYTHON" launchers/bench.py reshape --scale million --quick --out "$OUT/reshape.md"
        return
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    case "$stage" in
        train)  # ViT-L/16 bf16 images/s against DDP, MFU and data wait; the DALI mixed-decoder loader
            timed train-bench 240 "$KIT_PYTHON" launchers/bench.py train --out "$OUT/train.md"
            timed loader-bench 50 "$KIT_PYTHON" launchers/bench.py loader --out "$OUT/loader.md" ;;
        tests)  # the gpu-marked tests (1M x 768 DRCDown timing among them), then the million-scale benchmark
            timed gpu-tests 150 "$KIT_PYTHON" -m pytest -q -m gpu -rA -p no:cacheprovider --timeout 140
            timed reshape-million-bench 45 "$KIT_PYTHON" launchers/bench.py reshape --scale million --out "$OUT/reshape.md" ;;
    esac
}

run() {
    local stage=$1 dry=0
    if [ "$stage" = --dry-run ]; then
        dry=1 stage=tests
        KIT_HOME=$(mktemp -d)/kit
        OUT=${OUT:-$KIT_HOME/results}
        say "dry run against $KIT_PYTHON, machine folder $KIT_HOME"
    fi
    OUT=${OUT:-gpu-results}
    mkdir -p "$OUT"
    case "$stage" in
        stash) stash; return ;;
        train | tests) ;;
        *) say "unknown stage $stage (stash | train | tests | --dry-run)"; return 2 ;;
    esac
    stash || return 1
    if [ ! -f "$KIT_HOME/site/.installed" ]; then
        assemble && install && touch "$KIT_HOME/site/.installed" || return 1
    else
        use_site
        say "reusing the install of an earlier run in $KIT_HOME/site"
    fi
    checks "$stage" "$dry"
    say "results in $OUT"; cat "$OUT/summary.txt"
    ! grep -qv ': exit 0 in' "$OUT/summary.txt"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run "${2:-tests}" ;;
    *) echo "usage: $0 prepare | run stash | run train | run tests | run --dry-run" >&2; exit 2 ;;
esac
