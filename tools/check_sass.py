"""Checks the compiled CUDA kernels for what their design promises, without a GPU.

    python tools/check_sass.py [--object tree_attention.cu.o --object sampling.cu.o] [--json out.json]

Compiles csrc/cuda/tree_attention.cu and sampling.cu for sm_80 and sm_90a with
nvcc (or reads objects CMake built, --object), disassembles them with cuobjdump
(the toolkit's, or the copy Triton ships), and checks every variant of the
tree-attention and verification kernels:

- the tensor-core kernel (fp16 and bf16 alike) has ldmatrix (LDSM), mma.sync
  (HMMA) and cp.async (LDGSTS) in its SASS;
- the sm_90a build of the Hopper kernel has warpgroup MMAs (HGMMA), cp.async
  (LDGSTS) arriving on mbarriers (ARRIVES), mbarrier waits (SYNCS) and the
  producer/consumer register handover (USETMAXREG: ptxas drops setmaxnreg,
  warning C7508, when it cannot tell the entry register count), and at most
  two wgmma waits per m-tile (more: ptxas serialised the wgmmas); its sm_80
  build is a trap stub the launcher never picks;
- no kernel spills: no local loads/stores (LDL/STL) and a zero stack frame
  (the verification kernels included: their row passes keep 4 loads in flight);
- the verification kernels (the walk and the split pass) read rows with
  16-byte loads (LDG.E.128);
- registers x threads x the CTAs per SM its launch bounds promise fit the
  65,536 registers of an SM, and the dynamic shared memory of those CTAs fits
  the SM (164 KB on sm_80, 228 KB on sm_90a, 1 KB reserved per CTA) and a CTA
  fits 99 KB (the sm_86/89 opt-in, so the sm_80 build runs there too; the
  sm_90a-only Hopper kernel: 227 KB). The
  fp16/bf16 builds of the CUDA-core kernel are exempt (sm_80+ never runs them).

Shared-memory sizes come from the kernels' own constexpr configurations: a small
host program prints them through the CPU harness's headers (g++, seconds). Exit
status 1 with a list of what failed; a table of every variant either way.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "csrc" / "tests" / "emu"
ARCHS = ("sm_80", "sm_90a")
SM_SMEM = {"sm_80": 164 * 1024, "sm_90a": 228 * 1024}
SM_REGS = 65536
CTA_SMEM_LIMIT = 99 * 1024
RESERVED_SMEM = 1024

# Kernel (demangled template arguments) -> threads, CTAs per SM promised by its
# __launch_bounds__, SASS it must have.
MMA = re.compile(r"tree_attention_mma_kernel<(__half|__nv_bfloat16), (\d+), (\d+)>")
WGMMA = re.compile(r"tree_attention_wgmma_kernel<(__half|__nv_bfloat16), (\d+), (\d+)>")
FMA = re.compile(r"tree_attention_kernel<(float|__half|__nv_bfloat16), (\d+)>")
MERGE = re.compile(r"tree_attention_merge_kernel<(float|__half|__nv_bfloat16), (\d+)>")
# Verification: the walk (one CTA per request, launch bounds (256, 1)) and the
# split pass (launch bounds (256, 4)); both read rows with 16-byte loads.
VERIFY = re.compile(r"verify_kernel<(float|__half|__nv_bfloat16), \(specdec::VerifyMode\)[0-3]>")  # one per mode
VERIFY_PARTIAL = re.compile(r"verify_partial_kernel<(float|__half|__nv_bfloat16)>")
SOURCES = ("tree_attention.cu", "sampling.cu")

SMEM_PROGRAM = r"""
#include <cstdio>
#include "specdec/tree_attention_wgmma.cuh"
namespace ta = specdec::kernels::tree_attn;
template <typename T, int D, int R> void wg(const char* t) {
  using C = ta::WgmmaConfig<T, D, R>;
  std::printf("tree_attention_wgmma_kernel<%s, %d, %d> %zu %d %d %d\n", t, D, R, C::kSmemBytes, C::kThreads,
              C::kCtasPerSm, C::kMTiles);
}
template <typename T, int D, int W> void mma(const char* t) {
  std::printf("tree_attention_mma_kernel<%s, %d, %d> %zu\n", t, D, W, ta::MmaConfig<T, D, W>::kSmemBytes);
}
template <typename T, int D> void fma(const char* t) {
  std::printf("tree_attention_kernel<%s, %d> %zu\n", t, D, ta::Config<T, D>::kSmemBytes);
}
int main() {
  mma<__half, 64, 4>("__half"); mma<__half, 64, 8>("__half"); mma<__half, 128, 4>("__half");
  mma<__half, 128, 8>("__half"); mma<__half, 256, 4>("__half");
  mma<__nv_bfloat16, 64, 4>("__nv_bfloat16"); mma<__nv_bfloat16, 64, 8>("__nv_bfloat16");
  mma<__nv_bfloat16, 128, 4>("__nv_bfloat16"); mma<__nv_bfloat16, 128, 8>("__nv_bfloat16");
  mma<__nv_bfloat16, 256, 4>("__nv_bfloat16");
  wg<__half, 64, 64>("__half"); wg<__half, 64, 128>("__half"); wg<__half, 64, 256>("__half");
  wg<__half, 128, 64>("__half"); wg<__half, 128, 128>("__half"); wg<__half, 128, 256>("__half");
  wg<__half, 256, 128>("__half");
  wg<__nv_bfloat16, 64, 64>("__nv_bfloat16"); wg<__nv_bfloat16, 64, 128>("__nv_bfloat16");
  wg<__nv_bfloat16, 64, 256>("__nv_bfloat16"); wg<__nv_bfloat16, 128, 64>("__nv_bfloat16");
  wg<__nv_bfloat16, 128, 128>("__nv_bfloat16"); wg<__nv_bfloat16, 128, 256>("__nv_bfloat16");
  wg<__nv_bfloat16, 256, 128>("__nv_bfloat16");
  fma<float, 64>("float"); fma<float, 128>("float"); fma<float, 256>("float");
  fma<__half, 64>("__half"); fma<__half, 128>("__half"); fma<__half, 256>("__half");
  fma<__nv_bfloat16, 64>("__nv_bfloat16"); fma<__nv_bfloat16, 128>("__nv_bfloat16");
  fma<__nv_bfloat16, 256>("__nv_bfloat16");
}
"""


def find_tool(name: str) -> str:
    """cuobjdump / cu++filt: the PATH, the toolkit next to nvcc, then Triton's bundled copy."""
    hit = shutil.which(name)
    if hit:
        return hit
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from cuda_toolkit import find_toolkit
        cand = Path(find_toolkit().root) / "bin" / name
        if cand.exists():
            return str(cand)
    except Exception:  # noqa: BLE001 - any failure: try the next place
        pass
    try:
        import triton
        cand = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if cand.exists():
            return str(cand)
    except ImportError:
        pass
    raise SystemExit(f"check_sass: {name} not found (PATH, the CUDA toolkit, triton/backends/nvidia/bin)")


def compile_object(out: Path, source: str) -> Path:
    nvcc = shutil.which("nvcc") or find_tool("nvcc")
    obj = out / (source + ".o")
    cmd = [nvcc, "-c", "-O3", "-std=c++17", f"-I{ROOT / 'csrc' / 'include'}", "-o", str(obj),
           str(ROOT / "csrc" / "cuda" / source)]
    for a in ARCHS:
        cmd[1:1] = [f"-gencode=arch=compute_{a[3:]},code={a}"]
    subprocess.run(cmd, check=True)
    return obj


def smem_sizes(out: Path) -> dict[str, int]:
    sys.path.insert(0, str(EMU))
    import rewrite_cuda
    headers = out / "include" / "specdec"
    rewrite_cuda.main(["--headers", str(headers), str(ROOT / "csrc" / "include" / "specdec")])
    src, exe = out / "smem.cpp", out / "smem"
    src.write_text(SMEM_PROGRAM)
    subprocess.run([os.environ.get("CXX", "g++"), "-std=c++17", "-O0", "-w", "-DSPECDEC_EMULATED", "-include",
                    str(EMU / "cuda_emu.h"), f"-I{EMU / 'include'}", f"-I{headers.parent}", str(src),
                    "-o", str(exe)], check=True)
    sizes, configs = {}, {}
    for line in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines():
        name, *numbers = line.rsplit(" ", 4) if WGMMA.match(line) else line.rsplit(" ", 1)
        sizes[name] = int(numbers[0])
        if len(numbers) > 1:
            configs[name] = tuple(int(x) for x in numbers[1:])
    return sizes, configs


def wgmma_config(name: str) -> tuple[int, int, int]:
    """Threads, CTAs per SM and m-tiles per consumer warpgroup of a wgmma kernel
    <T, D, rows>, as WgmmaConfig defines them (main checks the two agree)."""
    rows = int(WGMMA.fullmatch(name).group(3))
    return (256, 2, 1) if rows == 64 else (384, 1, rows // 128)


def parse(obj: Path) -> dict[tuple[str, str], dict]:
    """(arch, demangled kernel) -> registers, stack, instruction counts."""
    cuobjdump, filt = find_tool("cuobjdump"), shutil.which("cu++filt")
    res = subprocess.run([cuobjdump, "-res-usage", str(obj)], check=True, capture_output=True, text=True).stdout
    sass = subprocess.run([cuobjdump, "-sass", str(obj)], check=True, capture_output=True, text=True).stdout
    mangled = sorted(set(re.findall(r"Function (?:: )?(_Z\w+)", res + sass)))
    if filt:
        names = subprocess.run([filt], input="\n".join(mangled), check=True, capture_output=True,
                               text=True).stdout.split("\n")
    else:  # c++filt understands the same mangling
        names = subprocess.run(["c++filt"], input="\n".join(mangled), check=True, capture_output=True,
                               text=True).stdout.split("\n")
    # Template arguments may hold casts: verify_kernel<float, (specdec::VerifyMode)1>.
    demangle = {m: re.sub(r"^.*?((?:tree_attention\w*|verify\w*kernel)<(?:[^()<>]|\([\w:]+\))*>).*$", r"\1", n)
                for m, n in zip(mangled, names)}
    kernels: dict[tuple[str, str], dict] = {}
    arch = None
    for block in re.split(r"(?=arch = sm_\w+)|(?=\n\s*Function)", res):
        m = re.search(r"arch = (sm_\w+)", block)
        if m:
            arch = m.group(1)
        m = re.search(r"Function (_Z\w+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", block)
        if m:
            kernels[(arch, demangle[m.group(1)])] = {"regs": int(m.group(2)), "stack": int(m.group(3)),
                                                     "static_smem": int(m.group(4)), "local": int(m.group(5)),
                                                     "sass": {}}
    arch = cur = None
    for line in sass.splitlines():
        m = re.search(r"arch = (sm_\w+)", line)
        if m:
            arch = m.group(1)
        m = re.search(r"Function : (_Z\w+)", line)
        if m:
            cur = kernels.setdefault((arch, demangle[m.group(1)]), {"sass": {}})["sass"]
            continue
        if cur is not None and "WARPGROUP.DEPBAR" in line:  # a wgmma wait (one per HGMMA: serialised)
            cur["WGDEPBAR"] = cur.get("WGDEPBAR", 0) + 1
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)([.\w]*)", line)
        if m and cur is not None:
            cur[m.group(1)] = cur.get(m.group(1), 0) + 1
            if m.group(1) == "LDG" and m.group(2).endswith(".128"):  # 16-byte global loads (verify's row passes)
                cur["LDG.128"] = cur.get("LDG.128", 0) + 1
    return kernels


def check(kernels: dict, sizes: dict[str, int]) -> tuple[list[dict], list[str]]:
    rows, failures = [], []
    for (arch, name), k in sorted(kernels.items()):
        if arch not in ARCHS or not (name.startswith("tree_attention") or name.startswith("verify")):
            continue
        sass = k["sass"]
        need: tuple[str, ...] = ()
        cta_limit = CTA_SMEM_LIMIT
        if m := WGMMA.fullmatch(name):
            # sm_90a only: the sm_80 build is a trap stub (no registers or shared memory to fit).
            if name not in sizes:
                failures.append(f"{arch} {name}: not in the configuration program (add it to SMEM_PROGRAM)")
                continue
            threads, ctas_planned, m_tiles = wgmma_config(name)
            ctas = ctas_planned if arch == "sm_90a" else 0
            need = ("HGMMA", "LDGSTS", "ARRIVES", "SYNCS", "USETMAXREG") if arch == "sm_90a" else ()
            cta_limit = 227 * 1024
            if arch == "sm_90a" and sass.get("WGDEPBAR", 0) > 2 * m_tiles:
                # Two commit groups per key tile and m-tile (S, then P V): more waits mean ptxas serialised the wgmmas.
                failures.append(f"{arch} {name}: {sass['WGDEPBAR']} wgmma waits (want {2 * m_tiles}: ptxas "
                                "serialised the wgmmas, warning C7520)")
        elif m := MMA.fullmatch(name):
            threads, ctas = 32 * int(m.group(3)), 2 if m.group(3) == "4" else 1
            need = ("LDSM", "HMMA", "LDGSTS")
        elif m := FMA.fullmatch(name):
            # fp16 / bf16 take the tensor-core kernel on sm_80+: these builds of
            # the CUDA-core kernel never run, so only their spills count.
            threads, ctas = 128, 2 if m.group(1) == "float" else 0
        elif MERGE.fullmatch(name):
            threads, ctas = 128, 1
        elif VERIFY.fullmatch(name):
            threads, ctas = 256, 1
            need = ("LDG.128",)
        elif VERIFY_PARTIAL.fullmatch(name):
            threads, ctas = 256, 4
            need = ("LDG.128",)
        else:
            failures.append(f"{arch} {name}: a kernel this check does not know (add it)")
            continue
        smem = sizes.get(name, 0)
        row = {"arch": arch, "kernel": name, "threads": threads, "ctas_per_sm": ctas, "regs": k.get("regs"),
               "stack": k.get("stack"), "dynamic_smem": smem,
               **{op: sass.get(op, 0) for op in ("LDSM", "HMMA", "HGMMA", "LDGSTS", "LDL", "STL", "LDG.128")}}
        rows.append(row)
        why = [f"no {op}" for op in need if sass.get(op, 0) == 0]
        why += [f"{op} x{sass[op]} (a spill)" for op in ("LDL", "STL") if sass.get(op, 0)]
        if k.get("stack", 0) or k.get("local", 0):
            why.append(f"stack {k.get('stack')} B, local {k.get('local')} B")
        if k.get("regs") is None:
            why.append("no resource usage reported")
        elif ctas and k["regs"] * threads * ctas > SM_REGS:
            why.append(f"{k['regs']} registers x {threads} threads x {ctas} CTAs > {SM_REGS}")
        if ctas and smem > cta_limit:
            why.append(f"{smem} B of shared memory > {cta_limit} per CTA")
        if (smem + RESERVED_SMEM) * ctas > SM_SMEM[arch]:
            why.append(f"{ctas} CTAs x {smem} B of shared memory > the SM's {SM_SMEM[arch]}")
        failures += [f"{arch} {name}: {w}" for w in why]
    return rows, failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--object", type=Path, action="append",
                    help="an object file of csrc/cuda/tree_attention.cu or sampling.cu built for sm_80;sm_90a "
                         "(repeatable; default: compile both)")
    ap.add_argument("--json", type=Path, help="write the table here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        objects = args.object or [compile_object(Path(tmp), src) for src in SOURCES]
        kernels = {}
        for obj in objects:
            kernels.update(parse(obj))
        sizes, configs = smem_sizes(Path(tmp))
    rows, failures = check(kernels, sizes)
    failures += [f"{name}: WgmmaConfig says (threads, CTAs per SM, m-tiles) = {cfg}, this check assumes "
                 f"{wgmma_config(name)}" for name, cfg in configs.items() if cfg != wgmma_config(name)]
    if not any(r["kernel"].startswith("tree_attention_mma_kernel") for r in rows):
        failures.append("no tensor-core kernel found in the objects")
    if not any(r["kernel"].startswith("tree_attention_wgmma_kernel") and r["arch"] == "sm_90a" for r in rows):
        failures.append("no sm_90a wgmma kernel found in the objects")
    if not any(r["kernel"].startswith("verify_kernel") for r in rows):
        failures.append("no verification kernel found in the objects")
    if not any(r["kernel"].startswith("verify_partial_kernel") for r in rows):
        failures.append("no verification split-pass kernel found in the objects")
    for a in ARCHS:
        if not any(r["arch"] == a for r in rows):
            failures.append(f"nothing compiled for {a}")
    print(f"{'arch':7} {'kernel':54} {'thr':>4} {'cta':>3} {'regs':>4} {'smem':>6} "
          f"{'LDSM':>5} {'HMMA':>5} {'HGMMA':>5} {'LDGSTS':>6} {'LDL':>4} {'STL':>4}")
    for r in rows:
        print(f"{r['arch']:7} {r['kernel']:54} {r['threads']:4} {r['ctas_per_sm']:3} {r['regs']:4} "
              f"{r['dynamic_smem']:6} {r['LDSM']:5} {r['HMMA']:5} {r['HGMMA']:5} {r['LDGSTS']:6} {r['LDL']:4} "
              f"{r['STL']:4}")
    for r in rows:
        if r["kernel"].startswith("verify"):
            print(f"{r['arch']:7} {r['kernel']:52} LDG.E.128 x{r['LDG.128']}")
    if args.json:
        args.json.write_text(json.dumps({"kernels": rows, "failures": failures}, indent=1))
    for f in failures:
        print("FAIL", f)
    print(f"check_sass: {'FAILED' if failures else 'passed'} ({len(rows)} kernels, {len(failures)} failures)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
