"""Turns CUDA C++ into host C++ for the CPU harness (cuda_emu.h):

    kernel<<<grid, block, smem, stream>>>(args)  ->  ::emu::launch(kernel, ::emu::config(grid, block, smem, stream), args)
    extern __shared__ __align__(N) T name[];     ->  T* name = reinterpret_cast<T*>(::emu::dynamic_shared());
    __shared__ T name[N];                         ->  auto& name = ::emu::static_shared<T[N]>(&key)  (one per block)

    python rewrite_cuda.py OUT_DIR SRC [SRC ...]      (each SRC is written to OUT_DIR/<basename>[.cpp for .cu])
    python rewrite_cuda.py --headers OUT_DIR SRC_DIR  (every header of SRC_DIR, same names)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

_DYN_SMEM = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w:\s]+?)\s+(\w+)\s*\[\s*\]\s*;")
_STATIC_SMEM = re.compile(r"__shared__\s+(?:__align__\(\s*(\d+)\s*\)\s+)?([\w:<>,\s]+?)\s+(\w+)\s*((?:\[[^\]]*\])*)\s*;")


def _static_smem(m: re.Match) -> str:
    # The address of a function-local static is the declaration's key: one per
    # declaration and template instantiation.
    align, t, name, dims = m.group(1) or "0", m.group(2).strip(), m.group(3), m.group(4)
    return (f"static char {name}__emu_key; "
            f"auto& {name} = ::emu::static_shared<{t}{dims}>(&{name}__emu_key, {align});")


def _kernel_start(text: str, end: int) -> int:
    """Start of the kernel expression ending at `end` (before `<<<`): names, `::`, template arguments."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    depth = 0
    while i > 0:
        ch = text[i - 1]
        if ch == ">":
            depth += 1
        elif ch == "<":
            depth -= 1
        elif depth == 0 and not (ch.isalnum() or ch in "_:"):
            break
        i -= 1
    return i


def rewrite(text: str) -> str:
    text = _DYN_SMEM.sub(lambda m: f"{m.group(1)}* {m.group(2)} = reinterpret_cast<{m.group(1)}*>(::emu::dynamic_shared());", text)
    text = _STATIC_SMEM.sub(_static_smem, text)
    out, pos = [], 0
    while True:
        lt = text.find("<<<", pos)
        if lt < 0:
            break
        gt = text.find(">>>", lt)
        paren = text.find("(", gt)
        if gt < 0 or paren < 0 or text[gt + 3:paren].strip():
            raise SystemExit(f"rewrite_cuda: cannot parse the launch at offset {lt}")
        start = _kernel_start(text, lt)
        kernel = text[start:lt].strip()
        cfg = text[lt + 3:gt]
        rest = text[paren + 1:]
        sep = "" if rest.lstrip().startswith(")") else ", "
        out.append(text[pos:start])
        out.append(f"::emu::launch({kernel}, ::emu::config({cfg}){sep}")
        pos = paren + 1
    out.append(text[pos:])
    return "".join(out)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--headers":
        out, src = Path(argv[1]), Path(argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.iterdir()):
            if f.suffix in (".h", ".cuh"):
                (out / f.name).write_text(rewrite(f.read_text()))
        return 0
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for s in map(Path, argv[1:]):
        name = s.name[:-3] + ".cpp" if s.name.endswith(".cu") else s.name
        (out / name).write_text(rewrite(s.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
