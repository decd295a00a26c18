#!/usr/bin/env bash
# Every wheel an air-gapped machine needs to install dist_syndr, into one folder (make wheelhouse).
#
#   bash scripts/wheelhouse.sh --python 3.12 --platform manylinux_2_28_x86_64 --extras gpu-cu13 --out wheelhouse
#   then, on the cluster:  pip install --no-index --find-links wheelhouse 'dist_syndr[gpu-cu13]'
#
# --python / --platform: the target interpreter and platform (pip download's --python-version / --platform;
#   manylinux_2_28 also admits the older manylinux tags). --extras: cpu | gpu-cu12 | gpu-cu13 (comma-separated,
#   test may be added). --constraints FILE: exact versions (e.g. lock/py311.txt, or a file pinning the site's
#   torch); without it the newest releases inside pyproject.toml's ranges. --builder PYTHON: an interpreter
#   with torch that builds DeepSpeed's wheel from its sdist (PyPI has no DeepSpeed wheel); its ops are
#   compiled on first use on the target, so the wheel is pure Python and fits any target.
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=3.11 platform=manylinux_2_28_x86_64 extras="" out=wheelhouse constraints="" builder=.venv/bin/python
while [ $# -gt 0 ]; do
    case "$1" in
        --python) python_version=$2; shift 2 ;;
        --platform) platform=$2; shift 2 ;;
        --extras) extras=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --constraints) constraints=$2; shift 2 ;;
        --builder) builder=$2; shift 2 ;;
        *) echo "wheelhouse.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
extras=${extras//test,/}; extras=${extras//,test/}; [ "$extras" = test ] && extras=""
mkdir -p "$out"
out=$(cd "$out" && pwd)
pip=(pip_filtered "$builder" -m pip)
# The local wheel mirrors make pip warn about every package they lack; keep the log readable.
pip_filtered() { "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; }
quiet=(--quiet --progress-bar off --disable-pip-version-check)
constraint_args=()
[ -n "$constraints" ] && constraint_args=(-c "$constraints")

# 1. this package, and DeepSpeed built from its sdist against the builder's torch (no isolated build env:
#    that would download another torch).
"${pip[@]}" wheel "${quiet[@]}" --no-deps -w "$out" .
deepspeed_requirement=$(grep -o '"deepspeed[^"]*"' pyproject.toml | tr -d '"')
if [ -n "$constraints" ] && grep -q '^deepspeed==' "$constraints"; then
    deepspeed_requirement=$(grep '^deepspeed==' "$constraints")
fi
if ! ls "$out"/deepspeed-*.whl > /dev/null 2>&1; then
    DS_BUILD_OPS=0 "${pip[@]}" wheel "${quiet[@]}" --no-deps --no-build-isolation --no-binary deepspeed \
        -w "$out" "$deepspeed_requirement"
fi

# 2. everything else as binary wheels for the target, resolved from the package's metadata.
platform_args=(--platform "$platform")
for tag in manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    [[ "$platform" == *x86_64 ]] && platform_args+=(--platform "$tag")
done
target="dist_syndr${extras:+[$extras]}"
"${pip[@]}" download "${quiet[@]}" -d "$out" --find-links "$out" --only-binary=:all: \
    --python-version "$python_version" --implementation cp "${platform_args[@]}" "${constraint_args[@]}" "$target"
count=$(ls "$out"/*.whl | wc -l)
echo "wheelhouse: $count wheels, $(du -sh "$out" | cut -f1) in $out for Python $python_version on $platform ($target)"
echo "install with: pip install --no-index --find-links $out '$target'"
