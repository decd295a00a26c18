#!/usr/bin/env bash
# The GPU check kit for the lent GPU machine (an H100 or H200 with Python 3.12, its own torch 2.11 + CUDA 13,
# no package registry; 64 MiB of files and 10 minutes per call, 15 minutes of device time in all).
# scripts/README.md: the profiles, the command to paste into the device tool, what each stage measures.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'EOF'
usage: bash scripts/gpu_kit.sh COMMAND

  prepare [core|dali|all]   here: the wheels the machine lacks into gpu-kit/ (core: default, about 4 MiB;
                            dali: the 199 MB DALI wheel and its libraries, cut into parts), then every
                            profile's calls with their carried sizes and the core stages' budgets
  run core [--dry-run] [--only STAGE,..] [--budget STAGE=SECONDS]
                            there, in ONE call (carry gpu-kit/core, timeout_s 600): install, preflight,
                            gpu-tests, reshape, train, score; each stage killed whole at its budget;
                            results in $OUT (summary.txt, results.md, log.txt) as each stage ends.
                            --dry-run: here, every stage's CPU form with tiny sizes
  run stash                 there, dali profile: keep the part this call carried (one call per part)
  run dali [--dry-run]      there, dali profile, after the stash calls: install with DALI, the DALI tests,
                            bench.py loader
  run --dry-run             the same as run core --dry-run
  run train | run tests     the earlier kit's names: run core --only train | --only gpu-tests,reshape
  --help                    this text

Variables: KIT_DIR (gpu-kit), KIT_HOME (where the machine keeps files between calls: /tmp/dist_syndr-kit),
KIT_PYTHON (python3: the interpreter that runs the stages), KIT_PYTHON_VERSION (3.12: the Python the wheels
are for), KIT_BUILD_PYTHON (.venv/bin/python: builds DeepSpeed's wheel), KIT_PART_MIB (55),
OUT (results; gpu-results here).
EOF
}

KIT_DIR=${KIT_DIR:-gpu-kit}
KIT_HOME=${KIT_HOME:-/tmp/dist_syndr-kit}
KIT_PYTHON=${KIT_PYTHON:-python3}
KIT_PYTHON_VERSION=${KIT_PYTHON_VERSION:-3.12}
KIT_BUILD_PYTHON=${KIT_BUILD_PYTHON:-.venv/bin/python}
[ -x "$KIT_BUILD_PYTHON" ] || KIT_BUILD_PYTHON=python3
KIT_PART_MIB=${KIT_PART_MIB:-55}
TREE_LIMIT_MIB=60
# What the machine lacks for everything but DALI (its image holds torch, numpy, scipy, timm, pyyaml, tqdm,
# psutil, xxhash, msgpack, ninja, py-cpuinfo, einops, packaging, pillow, scikit-image, safetensors, onnx,
# pytest, pytest-timeout, hypothesis): DeepSpeed (built below) and these, at the versions of lock/py311.txt.
# MLflow is left out: its tests skip there, and the benchmarks do not track.
CORE_WHEELS=(webdataset wids braceexpand piq hjson pydantic pydantic_core annotated-types typing-inspection
    typing_extensions openpyxl et_xmlfile lz4)
DALI_WHEELS=(nvidia-dali-cuda130 nvidia-libnvcomp-cu13 nvidia-nvimgcodec-cu13 nvidia-nvjpeg nvidia-nvjpeg2k-cu13
    nvidia-nvtiff-cu13 nvtx makefun libcst astunparse gast optree)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
    --platform manylinux_2_34_x86_64)

say() { echo "gpu_kit: $*"; }
mib() { echo $(( ($1 + 1048575) / 1048576 )); }
tree_bytes() { git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | paste -sd+ | bc; }
folder_bytes() { du -sb "$1" | cut -f1; }
pinned() { local name; for name in "$@"; do
        grep -i -m1 "^$name==" lock/py311.txt || { say "$name is not in lock/py311.txt" >&2; return 1; }
    done; }

download() {  # download FOLDER NAME...: the locked versions' wheels for the machine's Python
    local folder=$1 pins
    shift
    pins=$(pinned "$@") || return 1
    # shellcheck disable=SC2086
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$KIT_PYTHON_VERSION" \
        --implementation cp "${PLATFORMS[@]}" -d "$folder" $pins 2>&1 | grep -v 'is ignored' || true
}

prepare_core() {  # gpu-kit/core/wheels: DeepSpeed's pure-Python wheel and the small ones, with SHA256SUMS
    local wheels=$KIT_DIR/core/wheels
    rm -rf "$KIT_DIR/core" && mkdir -p "$wheels"
    download "$wheels" "${CORE_WHEELS[@]}"
    DS_BUILD_OPS=0 "$KIT_BUILD_PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation --no-binary deepspeed \
        -w "$wheels" "$(pinned deepspeed)" 2>&1 | grep -v 'is ignored'  # PyPI has only the sdist
    local count
    count=$(ls "$wheels"/*.whl 2> /dev/null | wc -l)
    if [ "$count" -ne $(( ${#CORE_WHEELS[@]} + 1 )) ]; then
        say "core: $count wheels in $wheels, expected $(( ${#CORE_WHEELS[@]} + 1 ))"; return 1
    fi
    (cd "$wheels" && sha256sum -- *.whl > SHA256SUMS)
    say "core: $count wheels, $(mib "$(folder_bytes "$KIT_DIR/core")") MiB in $KIT_DIR/core"
}

prepare_dali() {  # the DALI wheels in one tar, cut into parts that each fit one call beside the tree
    local staging=$KIT_DIR/dali/dali-wheels
    rm -rf "$KIT_DIR/dali" && mkdir -p "$staging" "$KIT_DIR/dali/parts"
    download "$staging" "${DALI_WHEELS[@]}"
    (cd "$staging" && sha256sum -- *.whl > SHA256SUMS)
    tar -cf "$KIT_DIR/dali/payload.tar" -C "$KIT_DIR/dali" dali-wheels || return 1
    split_payload "$KIT_DIR/dali"
    rm -rf "$staging"
    say "dali: $(ls "$KIT_DIR"/dali/parts/part-* | wc -l) parts in $KIT_DIR/dali/parts"
}

split_payload() {  # split_payload FOLDER: FOLDER/payload.tar into FOLDER/parts, sha256 of each and the whole
    local folder=$1
    split -b "${KIT_PART_MIB}M" -d -a 2 "$folder/payload.tar" "$folder/parts/part-"
    { echo "sha256=$(sha256sum "$folder/payload.tar" | cut -d' ' -f1)"; echo "parts=$(ls "$folder"/parts/part-* | wc -l)"
      (cd "$folder/parts" && sha256sum part-*); } > "$folder/manifest.txt"
    rm -f "$folder/payload.tar"
}

print_calls() {  # each profile's calls for the device tool, with their carried sizes
    local base core parts i manifest size
    base=$(tree_bytes)
    core=$(folder_bytes "$KIT_DIR/core")
    size=$((base + core))
    echo "core profile: 1 call (the tree is $(mib "$base") MiB; a call carries at most $TREE_LIMIT_MIB MiB)"
    printf '  call 1: command "bash scripts/gpu_kit.sh run core"  carry ["%s/core"]  timeout_s 600  %d MiB\n' \
        "$KIT_DIR" "$(mib "$size")"
    if [ "$(mib "$size")" -ge "$TREE_LIMIT_MIB" ]; then say "the core call is over $TREE_LIMIT_MIB MiB"; return 1; fi
    echo "  stage budgets (each stage killed whole at its budget):"
    "$KIT_BUILD_PYTHON" -m dist_syndr.bench.gpu_kit budgets core || return 1
    if [ ! -f "$KIT_DIR/dali/manifest.txt" ]; then
        echo "dali profile (optional): not prepared; bash scripts/gpu_kit.sh prepare dali fetches it (about 270 MiB)"
        return 0
    fi
    mapfile -t parts < <(ls "$KIT_DIR"/dali/parts/part-*)
    manifest=$(stat -c %s "$KIT_DIR/dali/manifest.txt")
    echo "dali profile (optional): $(( ${#parts[@]} + 1 )) calls in a row, each within 30 s of the last"
    for i in "${!parts[@]}"; do
        size=$((base + $(stat -c %s "${parts[$i]}") + manifest))
        printf '  call %d: command "bash scripts/gpu_kit.sh run stash"  carry ["%s/dali/manifest.txt", "%s"]  timeout_s 60  %d MiB\n' \
            $((i + 1)) "$KIT_DIR" "${parts[$i]}" "$(mib "$size")"
        if [ "$(mib "$size")" -ge "$TREE_LIMIT_MIB" ]; then say "stash call $((i + 1)) is over $TREE_LIMIT_MIB MiB"; return 1; fi
    done
    size=$((base + core + manifest))
    printf '  call %d: command "bash scripts/gpu_kit.sh run dali"  carry ["%s/core", "%s/dali/manifest.txt"]  timeout_s 600  %d MiB\n' \
        $(( ${#parts[@]} + 1 )) "$KIT_DIR" "$KIT_DIR" "$(mib "$size")"
    echo "  stage budgets:"
    "$KIT_BUILD_PYTHON" -m dist_syndr.bench.gpu_kit budgets dali
}

prepare() {
    case "${1:-core}" in
        core) prepare_core || return 1 ;;
        dali) prepare_dali || return 1 ;;
        all) prepare_core && prepare_dali || return 1 ;;
        *) say "prepare: unknown profile ${1} (core | dali | all)"; return 2 ;;
    esac
    [ -d "$KIT_DIR/core/wheels" ] || prepare_core || return 1
    print_calls
}

# ---- on the machine

stash() {  # keep what this call carried; say what earlier calls left (files outside the tree must survive)
    mkdir -p "$KIT_HOME/parts"
    local previous=0
    [ -f "$KIT_HOME/calls.log" ] && previous=$(wc -l < "$KIT_HOME/calls.log")
    say "$previous earlier call(s) left files in $KIT_HOME"
    cp "$KIT_DIR"/dali/manifest.txt "$KIT_HOME"/ 2>/dev/null
    cp "$KIT_DIR"/dali/parts/part-* "$KIT_HOME/parts/" 2>/dev/null
    echo "$(date -u +%FT%TZ) $(ls "$KIT_HOME/parts" | wc -l) parts" >> "$KIT_HOME/calls.log"
    tail -1 "$KIT_HOME/calls.log"
}

assemble() {  # the DALI wheels from the parts, checked part by part and whole against the manifest
    local wanted
    wanted=$(grep '^parts=' "$KIT_HOME/manifest.txt" | cut -d= -f2)
    (cd "$KIT_HOME/parts" && grep ' part-' ../manifest.txt | sha256sum --check --quiet) \
        || { say "parts missing or damaged: $(ls "$KIT_HOME/parts" | wc -l) of $wanted here (start again from call 1)"; return 1; }
    cat "$KIT_HOME"/parts/part-* > "$KIT_HOME/payload.tar"
    echo "$(grep '^sha256=' "$KIT_HOME/manifest.txt" | cut -d= -f2)  $KIT_HOME/payload.tar" | sha256sum --check --quiet \
        || { say "the reassembled payload does not match its sha256"; return 1; }
    rm -rf "$KIT_HOME/dali-wheels" && tar -xf "$KIT_HOME/payload.tar" -C "$KIT_HOME" && rm -f "$KIT_HOME/payload.tar"
    say "reassembled from $wanted parts: $(ls "$KIT_HOME"/dali-wheels/*.whl | wc -l) wheels"
}

run() {
    local profile=${1:-core} dry=()
    [ "$profile" = --dry-run ] && profile=core || shift
    local args=("$@") arg
    case "$profile" in  # the earlier kit's stage names: the same checks, now inside the core profile
        train) profile=core args+=(--only train) ;;
        tests) profile=core args+=(--only gpu-tests,reshape) ;;
    esac
    for arg in "$@"; do [ "$arg" = --dry-run ] && dry=(--dry-run); done
    case "$profile" in
        stash) stash; return ;;
        core | dali) ;;
        *) say "unknown profile $profile (core | stash | dali)"; usage >&2; return 2 ;;
    esac
    if [ ${#dry[@]} -gt 0 ]; then
        KIT_HOME=$(mktemp -d)/kit
        trap 'rm -rf "$(dirname "$KIT_HOME")"' EXIT
        say "dry run against $KIT_PYTHON, machine folder $KIT_HOME"
    fi
    OUT=${OUT:-gpu-results}
    mkdir -p "$OUT" "$KIT_HOME"
    local wheels=(--wheels "$KIT_DIR/core/wheels")
    if [ "$profile" = dali ]; then
        if [ ${#dry[@]} -gt 0 ]; then  # every part at once, as if stashed call by call
            mkdir -p "$KIT_HOME/parts" && cp "$KIT_DIR"/dali/parts/part-* "$KIT_HOME/parts/" \
                && cp "$KIT_DIR/dali/manifest.txt" "$KIT_HOME/" || return 1
        else
            stash > /dev/null
        fi
        assemble || return 1
        wheels+=(--wheels "$KIT_HOME/dali-wheels")
    fi
    if command -v nvidia-smi > /dev/null; then
        { echo "===== nvidia-smi"; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
            --format=csv; } >> "$OUT/log.txt" 2>&1
    fi
    export TORCH_EXTENSIONS_DIR="$KIT_HOME/torch_extensions" MPLCONFIGDIR="$KIT_HOME/mpl"
    "$KIT_PYTHON" -m dist_syndr.bench.gpu_kit run "$profile" --out "$OUT" --site "$KIT_HOME/site" "${wheels[@]}" \
        "${args[@]}"
}

case "${1:-}" in
    prepare) prepare "${2:-core}" ;;
    run) shift; run "$@" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
