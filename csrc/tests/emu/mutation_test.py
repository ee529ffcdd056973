"""Proof that the CPU harness catches bugs: each mutation plants one deliberate
bug in a copy of a kernel header, builds the emulated test with the named
sanitizer, and the run must fail. The unmutated build must pass first (a
harness that fails everything proves nothing).

    python csrc/tests/emu/mutation_test.py [--only NAME]

Run by CI after the CMake stage. Mutations of the tree-attention and verify
kernels (a lane missing from a shuffle mask, an unraised shared-memory limit,
a tile bound off by one) wait for a faster harness: their emulated tests take
many minutes on 2 cores with one host thread per CUDA thread.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
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
]


def build(work: Path, headers: Path, san: str, test: str) -> Path:
    src = work / "src"
    rewrite_cuda.main([str(src), *map(str, sorted((ROOT / "csrc" / "cuda").glob("*.cu"))),
                       str(ROOT / "csrc" / "tests" / f"test_{test}_cuda.cu")])
    exe = work / f"{test}_{san}"
    flags = ["-std=c++17", "-O1", "-g", "-Wno-unknown-pragmas", "-DSPECDEC_EMULATED", "-include",
             str(EMU / "cuda_emu.h"), f"-I{EMU / 'include'}", f"-I{headers.parent}", f"-I{ROOT / 'csrc' / 'include'}",
             f"-I{ROOT / 'csrc' / 'tests'}", *SAN[san]]
    sources = [EMU / "cuda_emu.cpp", src / f"{test}.cpp", src / f"test_{test}_cuda.cpp",
               *sorted((ROOT / "csrc" / "cpu").glob("*.cpp"))]
    subprocess.run(["g++", *flags, *map(str, sources), "-o", str(exe), "-pthread"], check=True)
    return exe


def run(exe: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1", ASAN_OPTIONS="detect_leaks=0")
    return subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=900)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--only", help="run the mutations whose name contains this")
    args = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or args.only in m[0]]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for san in sorted({m[4] for m in chosen}):
            work = Path(tmp) / f"clean-{san}"
            headers = work / "include" / "specdec"
            rewrite_cuda.main(["--headers", str(headers), str(ROOT / "csrc" / "include" / "specdec")])
            r = run(build(work, headers, san, "kv_cache"))
            if r.returncode != 0:
                print(f"FAIL: the unmutated kernels fail under {san}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
                return 1
            print(f"ok   unmutated kernels pass under {san}")
        for i, (name, header, find, repl, san, test) in enumerate(chosen):
            work = Path(tmp) / f"m{i}"
            headers = work / "include" / "specdec"
            rewrite_cuda.main(["--headers", str(headers), str(ROOT / "csrc" / "include" / "specdec")])
            text = (headers / header).read_text()
            if text.count(find) != 1:
                print(f"FAIL: mutation '{name}' no longer applies to {header} (update its text)")
                failures += 1
                continue
            (headers / header).write_text(text.replace(find, repl))
            r = run(build(work, headers, san, test))
            caught = r.returncode != 0
            why = "sanitizer report" if "Sanitizer" in r.stderr else ("emulator error" if "[cuda emulator]" in r.stderr
                                                                      else "test failure")
            print(f"{'ok  ' if caught else 'FAIL'} {name} [{san}]: "
                  f"{'caught (' + why + ', rc ' + str(r.returncode) + ')' if caught else 'NOT caught'}")
            failures += not caught
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
