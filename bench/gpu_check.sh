#!/usr/bin/env bash
# The one-call GPU check: everything a lent H100/H200 should tell us, in at most
# 8 minutes on 16 cores, with no package registry and no internet.
#
#   bash bench/gpu_check.sh [--dry-run] [--out DIR] [--budget SECONDS]
#
# Steps (each under its own time cap, so a hang costs one step, not the run;
# a step also never outlives what is left of the whole budget):
#   env          versions, nvidia-smi, toolkit                          cap  20 s
#   build        pip install --no-build-isolation --no-deps -e .,       cap 240 s
#                MAX_JOBS = cores, TORCH_CUDA_ARCH_LIST = this device only
#   cmake        the torch-free CUDA library and C++ CUDA tests         cap 240 s (beside build)
#   gpu-tests    pytest -m gpu, Triton compiled for real                cap 120 s
#   memcheck     compute-sanitizer memcheck on each C++ CUDA test       cap  60 s (beside gpu-tests)
#   racecheck    compute-sanitizer racecheck, likewise                  cap  90 s (beside gpu-tests)
#   synccheck, initcheck: only while at least 60 s of the budget is left
#   mma-tests    on sm_90: the tree-attention C++ test with the mma.sync  cap  30 s
#                kernel (SPECDEC_TREE_ATTENTION_KERNEL=mma; auto takes wgmma)
#   bench-*      bench_kv_cache, bench_tree_attention, bench_verify,    cap  40 s each
#                bench_runtime, each --quick, baselines in the same process;
#                on sm_90 bench_tree_attention again with the mma.sync kernel
#   summary      one table, printed last
# Default budget: 470 s, leaving room under the device tool's 8-minute plan.
#
# --dry-run (CI, no device): runs what needs no device (environment, build
# configuration, CMake build, the benchmarks on CPU, the packing and the
# summary) and reports the device steps as skipped; it does not recompile an
# extension that is already built.
#
# Out: DIR (default $OUT, else bench/results/gpu-check-<time>) gets at most
# three files, because the device tool brings back at most eight:
#   gpu_check.json   every step (status, seconds, cap, command) and every benchmark's JSON
#   logs.tar.gz      every step's log and the sanitizer reports
#   summary.txt      the table printed last
#
# FlashInfer as a baseline: the GPU machine has no registry, so bring its wheels
# in the tree. Here: `echo /.whl/ >> .git/info/exclude`, then
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 -d .whl flashinfer-python==0.7.0
# (plus its cubin/jit-cache wheels where they fit the 64 MiB tree), and name `.whl`
# in the run's `carry`. Every .whl/*.whl is installed to /tmp/site before the steps.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=0
BUDGET=470
DEST=${OUT:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) DEST=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (expected --dry-run, --out DIR, --budget SECONDS)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$DEST" ] || DEST=$ROOT/bench/results/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$DEST"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LOGS=$WORK/logs; RES=$WORK/results
mkdir -p "$LOGS" "$RES"
STEPS=$WORK/steps.tsv
: > "$STEPS"
T0=$SECONDS
PY=${PYTHON:-python3}
NPROC=$(nproc)
export PYTHONUNBUFFERED=1

if [ "$DRY" = 0 ] && ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check.sh: no CUDA device visible to torch; use --dry-run on a machine without one" >&2
  exit 2
fi

if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

left() { echo $((BUDGET - (SECONDS - T0))); }

# record NAME STATUS SECONDS CAP COMMAND
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$STEPS"; }

# step NAME CAP COMMAND...: run under min(CAP, budget left); log to $LOGS/NAME.log
step() {
  local name=$1 cap=$2; shift 2
  local remaining; remaining=$(left)
  [ "$remaining" -lt "$cap" ] && cap=$remaining
  if [ "$cap" -le 5 ]; then
    record "$name" "skipped: budget spent" 0 "$cap" "$*"; return 0
  fi
  local start=$SECONDS rc
  # bash -c: a step may be one of the functions below (exported), which timeout cannot run itself.
  timeout --kill-after=10 "$cap" bash -c '"$@"' "$name" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  local status=ok
  if [ $rc = 124 ] || [ $rc = 137 ]; then status="timeout after ${cap}s"; elif [ $rc != 0 ]; then status="failed (rc $rc)"; fi
  record "$name" "$status" $((SECONDS - start)) "$cap" "$*"
  echo "[$((SECONDS - T0))s] $name: $status"
  pack
}

skip() { record "$1" "skipped: $2" 0 0 "${*:3}"; echo "[$((SECONDS - T0))s] $1: skipped ($2)"; }

pack() {
  tar -C "$WORK" -czf "$DEST/logs.tar.gz" logs steps.tsv 2>/dev/null
  $PY bench/gpu_check_summary.py --steps "$STEPS" --results "$RES" --logs "$LOGS" --budget "$BUDGET" \
    --dry-run "$DRY" --json "$DEST/gpu_check.json" --table "$DEST/summary.txt" > /dev/null 2>&1 || true
}

# ------------------------------------------------------------ what the steps run
if [ "$DRY" = 1 ]; then
  ARCHS=${TORCH_CUDA_ARCH_LIST:-8.0;9.0a}
else
  # This device only: a second arch doubles the device-code compile time.
  ARCHS=$($PY -c "import torch; ma, mi = torch.cuda.get_device_capability(); print(f'{ma}.{mi}' + ('a' if ma in (9, 10) else ''))")
fi
export TORCH_CUDA_ARCH_LIST=$ARCHS MAX_JOBS=$NPROC
CMAKE_ARCHS=$(echo "$ARCHS" | tr -d '.')
CMAKE_DIR=${GPU_CHECK_CMAKE_DIR:-$ROOT/build/gpu-check-cmake}
CUDA_TESTS="test_kv_cache_cuda test_tree_attention_cuda test_sampling_cuda"
SANITIZER=$(command -v compute-sanitizer || true)
for c in "${CUDA_HOME:-/nonexistent}/bin/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer \
         /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  if [ -z "$SANITIZER" ] && [ -x "$c" ]; then SANITIZER=$c; fi
done

env_facts() {
  echo "date $(date -u +%FT%TZ)"; echo "cores $NPROC"; uname -a
  nvidia-smi || true
  nvcc --version || true
  echo "compute-sanitizer: ${SANITIZER:-not found}"
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  $PY tools/cuda_toolkit.py
}
build_ext() {
  if [ "$DRY" = 1 ] && $PY -c "import specdec_kernels._C" 2>/dev/null; then
    echo "dry run: specdec_kernels._C is already built here; not recompiled"
    $PY setup.py --version   # still runs the toolkit search and the build configuration
  else
    $PY -m pip install --no-build-isolation --no-deps -v -e .
  fi
  $PY -m specdec_kernels info
}
cmake_tests() {
  # The CPU harness's emulated tests belong to CI; on the device they only cost compile time.
  local emu=()
  [ "$DRY" = 1 ] || emu=(-DSPECDEC_EMULATED_TESTS=OFF)
  cmake -S . -B "$CMAKE_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$CMAKE_ARCHS" "${emu[@]}" \
    && cmake --build "$CMAKE_DIR" -j "$NPROC"
}
sanitize() {
  local tool=$1 rc=0 t
  if [ -z "$SANITIZER" ]; then echo "compute-sanitizer not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda)"; return 1; fi
  for t in $CUDA_TESTS; do
    echo "== $tool $t"
    "$SANITIZER" --tool "$tool" --error-exitcode 99 --print-limit 20 "$CMAKE_DIR/$t" || rc=1
  done
  return $rc
}
export DRY PY NPROC CMAKE_DIR CMAKE_ARCHS CUDA_TESTS SANITIZER
export -f env_facts build_ext cmake_tests sanitize

# ------------------------------------------------------------------ steps
step env 20 env_facts
# The CMake build beside the extension build: 16 cores, two independent builds.
step cmake 240 cmake_tests &
CMAKE_PID=$!
step build 240 build_ext
wait $CMAKE_PID

if [ "$DRY" = 1 ]; then
  skip gpu-tests "no device (dry run)" pytest -m gpu
  for tool in memcheck racecheck synccheck initcheck; do skip "$tool" "no device (dry run)" compute-sanitizer --tool "$tool"; done
else
  # Sanitizers beside the GPU tests: neither is timed, and the budget is short.
  ( step memcheck 60 sanitize memcheck; step racecheck 90 sanitize racecheck ) &
  SAN_PID=$!
  step gpu-tests 120 $PY -m pytest python_tests -m gpu -q -p no:cacheprovider
  wait $SAN_PID
  for tool in synccheck initcheck; do
    if [ "$(left)" -ge 60 ]; then step "$tool" 40 sanitize "$tool"; else skip "$tool" "less than 60 s of the budget left"; fi
  done
  # auto runs the wgmma kernel on sm_90; the mma.sync kernel (every other sm_80+ device) gets its test here too.
  if [ "$CMAKE_ARCHS" = 90a ]; then
    step mma-tests 30 env SPECDEC_TREE_ATTENTION_KERNEL=mma "$CMAKE_DIR/test_tree_attention_cuda"
  fi
fi

# Benchmarks last and alone on the device, so their timings see no other work.
DEVICE=cuda; [ "$DRY" = 1 ] && DEVICE=cpu
for b in kv_cache tree_attention verify runtime; do
  step "bench-$b" 40 $PY "bench/bench_$b.py" --quick --device "$DEVICE" --out "$RES/bench_$b.json"
done
if [ "$DRY" = 0 ] && [ "$CMAKE_ARCHS" = 90a ]; then
  # The same shapes on the mma.sync kernel: wgmma's gain measured in one run.
  step bench-tree_attention_mma 40 env SPECDEC_TREE_ATTENTION_KERNEL=mma $PY bench/bench_tree_attention.py --quick \
    --device cuda --out "$RES/bench_tree_attention_mma.json"
fi

pack
cat "$DEST/summary.txt"
echo "wrote $DEST/gpu_check.json, $DEST/logs.tar.gz, $DEST/summary.txt ($((SECONDS - T0)) s)"
# The check's own verdict: every step that ran passed.
! grep -qP '\t(failed|timeout)' "$STEPS"
