"""Proof that the CPU harness catches bugs: each mutation plants one deliberate
bug in a copy of a kernel header, builds the emulated test with the named
sanitizer, and the run must fail. The unmutated build must pass first (a
harness that fails everything proves nothing).

    python csrc/tests/emu/mutation_test.py [--only NAME]

Run by CI after the CMake stage. A mutation names a kernel header
(csrc/include/specdec) or a launcher (csrc/cuda/*.cu); the tree-attention and
sampling tests run their --subset.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
EMU = ROOT / "csrc" / "tests" / "emu"
sys.path.insert(0, str(EMU))
import rewrite_cuda  # noqa: E402

SAN = {"tsan": ["-fsanitize=thread"],
       "asan": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]}

# (name, header, text to find, replacement, sanitizer, test)
MUTATIONS = [
    ("compact_kv: barrier after the offsets removed", "kv_cache.cuh",
     "    offsets[2 * j + 1] = dst;\n  }\n  __syncthreads();\n", "    offsets[2 * j + 1] = dst;\n  }\n",
     "tsan", "kv_cache"),
    ("compact_kv: path walked last chunk first", "kv_cache.cuh",
     "for (int64_t j0 = 1; j0 < n; j0 += kCompactChunk) {",
     "for (int64_t j0 = (n - 2) / kCompactChunk * kCompactChunk + 1; j0 >= 1; j0 -= kCompactChunk) {",
     "asan", "kv_cache"),
    ("append_kv: last vector of each row dropped (bound off by one)", "kv_cache.cuh",
     "const int64_t total = a.layout.num_heads * vecs_per_row;\n  const char* k_src",
     "const int64_t total = a.layout.num_heads * vecs_per_row - 1;\n  const char* k_src",
     "asan", "kv_cache"),
    ("tree attention: warp_max's shuffle mask misses lane 0", "tree_attention.cuh",
     "v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));", "v = fmaxf(v, __shfl_xor_sync(0xfffffffeu, v, o));",
     "asan", "tree_attention"),
    ("tree attention: K tile loop one vector past its bound", "tree_attention.cuh",
     "      for (int x = tid; x < kKeyTile * (D / kVec); x += kThreads) {\n        const int c = x / (D / kVec);\n"
     "        const int d = (x % (D / kVec)) * kVec;\n        const int64_t off = sKeyOff[c];\n"
     "        copy_vec<T>(sK + c * C::kLdT + d, off < 0 ? nullptr : k_cache + off + d, vec_ok);\n        if constexpr",
     "      for (int x = tid; x <= kKeyTile * (D / kVec); x += kThreads) {\n        const int c = x / (D / kVec);\n"
     "        const int d = (x % (D / kVec)) * kVec;\n        const int64_t off = sKeyOff[c];\n"
     "        copy_vec<T>(sK + c * C::kLdT + d, off < 0 ? nullptr : k_cache + off + d, vec_ok);\n        if constexpr",
     "asan", "tree_attention"),
    ("tree attention: shared-memory limit never raised", "tree_attention.cu",
     "if (k.smem <= 48 * 1024) return cudaSuccess;", "if (k.smem <= 227 * 1024) return cudaSuccess;",
     "asan", "tree_attention"),
    ("tree attention (tensor cores): barrier after the cp.async wait removed", "tree_attention_mma.cuh",
     "      ptx::cp_async_wait<kStages - 2>();\n      __syncthreads();\n",
     "      ptx::cp_async_wait<kStages - 2>();\n", "tsan", "tree_attention_mma"),
    ("tree attention (tensor cores): a tile read while its copies are in flight", "tree_attention_mma.cuh",
     "ptx::cp_async_wait<kStages - 2>();", "ptx::cp_async_wait<kStages - 1>();", "asan", "tree_attention_mma"),
    ("tree attention (tensor cores): block-table offsets prefetched for the wrong tile", "tree_attention_mma.cuh",
     "key_offsets(j + kStages, off);", "key_offsets(j + kStages - 1, off);", "asan", "tree_attention_mma"),
    ("tree attention (tensor cores): row max misses the quad's other half", "tree_attention_mma.cuh",
     "    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));\n", "", "asan", "tree_attention_mma"),
    ("tree attention: a tile taken as plain though a key has no block", "tree_attention_mma.cuh",
     "  for (int c = lane; c < kKeys; c += 32) ok = ok && key_ok[c] != 0;\n", "", "asan", "tree_attention"),
    ("tree attention (wgmma): S read before its wgmma group is waited for", "tree_attention_wgmma.cuh",
     "        ptx::wgmma_commit();\n        ptx::wgmma_wait<0>();\n        ptx::fence_regs(s);\n",
     "        ptx::wgmma_commit();\n        ptx::fence_regs(s);\n", "asan", "tree_attention"),
    ("tree attention (wgmma): a consumer reads a K/V stage without waiting for it to fill", "tree_attention_wgmma.cuh",
     "      ptx::mbarrier_wait(&full[stage], (it / kStages) & 1);\n", "", "tsan", "tree_attention"),
    ("tree attention (wgmma): the producer refills a stage the consumers still read", "tree_attention_wgmma.cuh",
     "      ptx::mbarrier_wait(&empty[stage], ((it / kStages) & 1) ^ 1);\n", "", "asan", "tree_attention"),
    ("tree attention (wgmma): the producer loads the next Q tile over the one in use", "tree_attention_wgmma.cuh",
     "    ptx::mbarrier_wait(q_empty, (round & 1) ^ 1);\n", "", "asan", "tree_attention"),
    ("tree attention (wgmma): the second consumer warpgroup's Q descriptor at the first's rows",
     "tree_attention_wgmma.cuh", "ptx::smem_desc(sQ + cw * kMT * 8 * C::kGroupElems,", "ptx::smem_desc(sQ,", "asan",
     "tree_attention"),
    ("tree attention (wgmma): the second m-tile's Q descriptor at the first m-tile's rows", "tree_attention_wgmma.cuh",
     "const uint64_t qd = q_desc + t * kMTileStep,", "const uint64_t qd = q_desc,", "asan", "tree_attention"),
    ("tree attention (wgmma): the fill CTAs not a whole number of clusters", "tree_attention.cu",
     "p.fill_ctas = int(ceil_div(std::min<int64_t>(ceil_div(n, ta::kThreads), kMaxFillCtas), p.cluster) * p.cluster);",
     "p.fill_ctas = int(std::min<int64_t>(ceil_div(n, ta::kThreads), kMaxFillCtas));", "asan", "tree_attention"),
    ("verify: barrier between the block sum's partials and their fold removed", "sampling.cuh",
     "  if ((threadIdx.x & 31) == 0) s.f[threadIdx.x >> 5] = v;\n  __syncthreads();\n  float r = s.f[0];\n"
     "  for (int w = 1; w < kWarps; ++w) r += s.f[w];",
     "  if ((threadIdx.x & 31) == 0) s.f[threadIdx.x >> 5] = v;\n  float r = s.f[0];\n"
     "  for (int w = 1; w < kWarps; ++w) r += s.f[w];", "tsan", "sampling"),
    ("verify: the row map's start ignored (target rows read at the node index)", "sampling.cuh",
     "const int64_t r = rows.start + node;", "const int64_t r = start + node;", "asan", "sampling"),
    ("verify: the top-p masses counted in half the goal's unit", "sampling.cuh",
     "double(expf(z - m)) * kMassUnit + 0.5", "double(expf(z - m)) * (kMassUnit / 2) + 0.5", "asan", "sampling"),
    ("verify: the top-k threshold wants more than k tokens at or above it", "sampling.cuh",
     "if (double(before + c) >= goal) {", "if (double(before + c) > goal) {", "asan", "sampling"),
    ("verify: the radix select's fold misses the last warp's histogram", "sampling.cuh",
     "for (int w = 0; w < kWarps; ++w) total += s.hist[w][threadIdx.x];",
     "for (int w = 0; w + 1 < kWarps; ++w) total += s.hist[w][threadIdx.x];", "asan", "sampling"),
    ("verify: the split argmax lets a later chunk win a tie", "sampling.cuh",
     "(r.first == row.vocab || p.raw_max > r.max)", "(r.first == row.vocab || p.raw_max >= r.max)",
     "asan", "sampling"),
    ("verify: the split softmax total misses the last chunk's partial", "sampling.cuh",
     "      for (int c = 0; c < row.chunks; ++c) {\n        const RowPartial& p = row.pre[c];\n        if (p.z_sum",
     "      for (int c = 0; c + 1 < row.chunks; ++c) {\n        const RowPartial& p = row.pre[c];\n        if (p.z_sum",
     "asan", "sampling"),
    ("verify: the draw's scan starts a warp after its own partial (inclusive prefix)", "sampling.cuh",
     "    if (v == int(warp)) running = next;\n    next += s.d[v];",
     "    next += s.d[v];\n    if (v == int(warp)) running = next;", "asan", "sampling"),
    ("verify: traversal's rejection does not renormalise the parent (w = m)", "sampling.cuh",
     "const float den = 1.f - pn.w + m;", "const float den = 1.f;", "asan", "sampling"),
    ("verify: the allowed_tokens bitmask read one token off", "sampling.cuh",
     "const int64_t tok = mask_x0 + x;", "const int64_t tok = mask_x0 + x + 1;", "asan", "sampling"),
    ("verify: min_p keeps tokens at half the threshold", "sampling.cuh",
     "if (expf(z - zmax) >= min_p && k < lowest)", "if (expf(z - zmax) >= 0.5f * min_p && k < lowest)", "asan",
     "sampling"),
    ("dynamic tree: the warp counts read before every warp wrote its own", "dynamic_tree.cuh",
     "    // is written below).\n    __syncthreads();\n", "    // is written below).\n", "tsan", "dynamic_tree"),
    ("dynamic tree: one candidate more than num_keep selected", "dynamic_tree.cuh",
     "node[j] = depth[j] > 0 && rank < a.num_keep;", "node[j] = depth[j] > 0 && rank <= a.num_keep;", "asan",
     "dynamic_tree"),
]
ARGS = {"tree_attention": ["--subset"], "tree_attention_mma": ["--subset"], "sampling": ["--subset"]}
# ctest's emulated TSan runs (CMakeLists.txt): the same tests and arguments as the TSan baselines here
# (tree attention's --subset on every head dim; the mutation builds instantiate 128 only, whose ASan
# baseline still runs here).
CTEST_TSAN = {"kv_cache", "tree_attention", "sampling", "dynamic_tree"}
# The tree-attention --subset runs at head dim 128 only, so its launcher instantiates only that.
LAUNCHER_FLAGS = {"tree_attention": ["-DSPECDEC_ONLY_HEAD_DIM=128"]}
# A test key -> the C++ test it builds and the environment it runs under: the
# harness is an sm_90 device, where tree attention takes the wgmma kernel;
# "tree_attention_mma" asks for the mma.sync kernel.
TESTS = {"tree_attention_mma": ("tree_attention", {"SPECDEC_TREE_ATTENTION_KERNEL": "mma"})}

# The harness's own checks (selftest.cu): case -> the sanitizer whose build must fail on it.
SELFTEST = {"inter_block_race": "tsan", "intra_block_race": "tsan", "deadlock": "asan",
            "smem_overrun": "asan", "misaligned_vector": "asan", "smem_over_limit": "asan",
            "cp_async_no_barrier": "tsan", "cp_async_not_waited": "asan", "ldmatrix_misaligned": "asan",
            "wgmma_not_waited": "asan", "wgmma_partial_group": "asan", "mbarrier_skip_wait": "tsan",
            "mbarrier_never_arrives": "asan", "mbarrier_uninitialised": "asan", "setmaxnreg_mismatch": "asan",
            "cluster_not_dividing": "asan"}


def selftest(tmp: Path) -> int:
    failures = 0
    for san in ("tsan", "asan"):
        src = tmp / f"selftest-{san}"
        rewrite_cuda.main([str(src), str(EMU / "selftest.cu")])
        exe = src / "selftest"
        subprocess.run(["g++", "-std=c++17", "-O2", "-g", "-DSPECDEC_EMULATED", "-include", str(EMU / "cuda_emu.h"),
                        f"-I{EMU / 'include'}", f"-I{ROOT / 'csrc' / 'include'}",
                        *SAN[san], str(EMU / "cuda_emu.cpp"), str(src / "selftest.cpp"), "-o", str(exe), "-pthread"],
                       check=True)
        for case in ["ok", *[c for c, s in SELFTEST.items() if s == san]]:
            env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1", ASAN_OPTIONS="detect_leaks=0")
            r = subprocess.run([str(exe), case], capture_output=True, text=True, env=env, timeout=120)
            good = (r.returncode == 0) == (case == "ok")
            print(f"{'ok  ' if good else 'FAIL'} harness self-check {case} [{san}]: rc {r.returncode}", flush=True)
            if not good:
                print(r.stderr[-1500:])
            failures += not good
    return failures


def sources(work: Path, header: str | None = None, find: str = "", repl: str = "") -> tuple[Path, Path]:
    """Copies of the kernel headers and launchers under `work`, one of them mutated."""
    headers, launchers = work / "include" / "specdec", work / "cuda"
    launchers.mkdir(parents=True)
    for f in (ROOT / "csrc" / "cuda").glob("*.cu"):
        (launchers / f.name).write_text(f.read_text())
    rewrite_cuda.main(["--headers", str(headers), str(ROOT / "csrc" / "include" / "specdec")])
    if header is not None:
        target = (launchers if header.endswith(".cu") else headers) / header
        text = target.read_text()
        if text.count(find) != 1:
            raise LookupError(f"the mutation no longer applies to {header} (update its text)")
        target.write_text(text.replace(find, repl))
    return headers, launchers


def flags(san: str, include: Path) -> list[str]:
    return ["-std=c++17", "-O2", "-g", "-Wno-unknown-pragmas", "-DSPECDEC_EMULATED", "-include",
            str(EMU / "cuda_emu.h"), f"-I{EMU / 'include'}", f"-I{include}", f"-I{ROOT / 'csrc' / 'include'}",
            f"-I{ROOT / 'csrc' / 'tests'}", *SAN[san]]


_common: dict[tuple[str, str], list[Path]] = {}
_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_lock = threading.Lock()


def _once(key, build):
    """``build()``'s result for ``key``, built by the first thread to ask;
    other keys build in parallel."""
    with _locks_lock:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        if key not in _common:
            _common[key] = build()
        return _common[key]


def _compile(work: Path, san: str, files: list[Path]) -> list[Path]:
    headers, _ = sources(work)
    objs = []
    for i, f in enumerate(files):
        obj = work / f"{i}-{f.stem}.o"
        subprocess.run(["g++", *flags(san, headers.parent), "-c", str(f), "-o", str(obj)], check=True)
        objs.append(obj)
    return objs


def common_objects(tmp: Path, san: str, test: str) -> list[Path]:
    """The objects no mutation changes, built once: the harness and the CPU
    kernels per sanitizer, the C++ test per (sanitizer, test). Mutations touch
    only kernel headers and launchers."""
    shared = _once((san, ""), lambda: _compile(tmp / f"common-{san}", san, [
        EMU / "cuda_emu.cpp", *sorted((ROOT / "csrc" / "cpu").glob("*.cpp"))]))

    def test_object():
        work = tmp / f"common-{san}-{test}"
        rewrite_cuda.main([str(work / "src"), str(ROOT / "csrc" / "tests" / f"test_{test}_cuda.cu")])
        return _compile(work, san, [work / "src" / f"test_{test}_cuda.cpp"])

    return _once((san, test), test_object) + shared


def build(work: Path, headers: Path, launchers: Path, san: str, test: str) -> Path:
    test = TESTS.get(test, (test, {}))[0]
    src = work / "src"
    rewrite_cuda.main([str(src), str(launchers / f"{test}.cu")])
    exe = work / f"{test}_{san}"
    subprocess.run(["g++", *flags(san, headers.parent), *LAUNCHER_FLAGS.get(test, []), str(src / f"{test}.cpp"),
                    *map(str, common_objects(work.parent, san, test)), "-o", str(exe), "-pthread"], check=True)
    return exe


def run(exe: Path, test: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1", ASAN_OPTIONS="detect_leaks=0",
               **TESTS.get(test, (test, {}))[1])
    return subprocess.run([str(exe), *ARGS.get(test, [])], capture_output=True, text=True, env=env, timeout=900)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--only", help="run the mutations whose name contains this")
    p.add_argument("--tsan-baseline-from-ctest", action="store_true",
                   help="skip the unmutated TSan runs that ctest's emulated_test_<test>_tsan makes with the same "
                        "arguments (CI runs ctest first; the longest runs here); the mma kernel's TSan baseline, "
                        "which ctest does not run, still runs")
    args = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or args.only in m[0]]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        failures += selftest(Path(tmp)) if not args.only else 0

        def clean(job):
            san, test = job
            work = Path(tmp) / f"clean-{san}-{test}"
            return job, run(build(work, *sources(work), san, test), test)

        cleans = sorted({(m[4], m[5]) for m in chosen})
        if args.tsan_baseline_from_ctest:
            for job in [j for j in cleans if j[0] == "tsan" and j[1] in CTEST_TSAN]:
                print(f"ok   unmutated {job[1]} kernels under tsan: ctest's emulated_test_{job[1]}_tsan ran them")
                cleans.remove(job)
        def mutate(job):
            i, (name, header, find, repl, san, test) = job
            began = time.perf_counter()
            work = Path(tmp) / f"m{i}"
            try:
                paths = sources(work, header, find, repl)
            except LookupError as e:
                return f"FAIL: mutation '{name}': {e}", False
            r = run(build(work, *paths, san, test), test)
            caught = r.returncode != 0
            why = "sanitizer report" if "Sanitizer" in r.stderr else ("emulator error" if "[cuda emulator]" in r.stderr
                                                                      else "test failure")
            return (f"{'ok  ' if caught else 'FAIL'} {name} [{san}]: "
                    f"{'caught (' + why + ', rc ' + str(r.returncode) + ')' if caught else 'NOT caught'}"
                    f" ({time.perf_counter() - began:.0f} s)"), caught

        # Baselines first in the queue, mutations behind them: a long baseline
        # shares the cores with mutations instead of holding one core idle.
        clean_runs = [pool.submit(clean, job) for job in cleans]
        mutant_runs = [pool.submit(mutate, job) for job in enumerate(chosen)]
        for future in clean_runs:
            (san, test), r = future.result()
            if r.returncode != 0:
                print(f"FAIL: the unmutated {test} kernels fail under {san}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
                for f in mutant_runs:
                    f.cancel()
                return 1
            print(f"ok   unmutated {test} kernels pass under {san}", flush=True)
        for future in mutant_runs:
            line, caught = future.result()
            print(line, flush=True)
            failures += not caught
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
