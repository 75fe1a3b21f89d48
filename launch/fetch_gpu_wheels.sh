#!/usr/bin/env bash
# The wheel kit for a GPU machine without network (issue 34): downloads launch/gpu_wheels.txt's packages as wheels for
# Python 3.12 on x86-64 Linux into .whl/ (git-ignored; emptied of wheels first, so no package is there twice), builds
# DeepSpeed's wheel from its sdist without compiled ops, and prints the kit's total size (target <= 10 MB). Run it
# where a package index is reachable, then carry .whl/ with the checkout: launch/gpu_acceptance.sh installs it with
# --no-deps into /tmp/site when a module is missing.
#
#   bash launch/fetch_gpu_wheels.sh            # into .whl/
#   bash launch/fetch_gpu_wheels.sh DIR        # into DIR
# PYTHON (default python3) is the interpreter whose pip runs; it need not be 3.12, nor have torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=${1:-.whl}
LIST=launch/gpu_wheels.txt
TARGET_BYTES=10000000

mapfile -t PINS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$LIST" | grep -v '^$')
BINARY=()
DEEPSPEED=
for pin in "${PINS[@]}"; do
  case "$pin" in
    deepspeed==*) DEEPSPEED=$pin ;;
    *) BINARY+=("$pin") ;;
  esac
done

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
# pip matches --platform tags exactly: name the manylinux tags a cp312 wheel of these packages may carry (pure-Python
# wheels, py3-none-any, match any).
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$DEST" "${BINARY[@]}"

if [ -n "$DEEPSPEED" ]; then
  SDIST=$(mktemp -d)
  trap 'rm -rf "$SDIST"' EXIT
  "$PYTHON" -m pip download -q --no-deps --no-binary=:all: -d "$SDIST" "$DEEPSPEED"
  # DS_BUILD_OPS=0: no op is compiled now (they are JIT-compiled with ninja where used), so the wheel is
  # py3-none-any. DeepSpeed's setup.py needs no torch for that (without it, it only warns); DS_ACCELERATOR=cuda
  # records CUDA's op list in the wheel, as a build on the GPU machine would, instead of this machine's CPU one.
  # --no-build-isolation uses this interpreter's setuptools, which must have bdist_wheel (setuptools >= 70.1 or the
  # `wheel` package); without it pip builds in an isolated environment with its own (fetched from the index).
  ISOLATION=()
  if "$PYTHON" -c "import setuptools.command.bdist_wheel" 2>/dev/null; then
    ISOLATION=(--no-build-isolation)
  fi
  DS_BUILD_OPS=0 DS_ACCELERATOR=cuda "$PYTHON" -m pip wheel -q --no-deps "${ISOLATION[@]}" -w "$DEST" \
    "$SDIST"/deepspeed-*.tar.gz
fi

shopt -s nullglob
WHEELS=("$DEST"/*.whl)
if [ "${#WHEELS[@]}" -ne "${#PINS[@]}" ]; then
  echo "fetch_gpu_wheels.sh: ${#WHEELS[@]} wheels in $DEST for ${#PINS[@]} pins in $LIST" >&2
  exit 1
fi
TOTAL=$(cat "${WHEELS[@]}" | wc -c)
for wheel in "${WHEELS[@]}"; do
  printf '%10d  %s\n' "$(wc -c <"$wheel")" "$(basename "$wheel")"
done
MB=$(awk -v b="$TOTAL" 'BEGIN { printf "%.1f", b / 1e6 }')
echo "fetch_gpu_wheels.sh: ${#WHEELS[@]} wheels in $DEST, $TOTAL bytes ($MB MB; target <= 10 MB)"
if [ "$TOTAL" -gt "$TARGET_BYTES" ]; then
  echo "fetch_gpu_wheels.sh: the kit is over the 10 MB target" >&2
  exit 1
fi
