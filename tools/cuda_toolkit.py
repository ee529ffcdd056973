"""Finds the CUDA toolkit setup.py compiles the CUDA kernels with.

torch guesses the toolkit as the grandparent folder of whichever `nvcc` is
first on the PATH. That guess is wrong wherever `nvcc` is a symlink or a
wrapper script (`/usr/local/bin/nvcc` that `exec`s the real compiler, conda
and module-system shims): torch then passes `-I/usr/local/include` and the
build dies on `cuda_runtime.h`. So we ask the compiler itself: `nvcc --dryrun`
prints the folder it really runs from (`TOP=`) and the include folders it
really passes (`INCLUDES=`), through any number of wrappers.

Order (the first that names a folder wins; a wrong explicit setting is an
error, never skipped silently):
1. `CUDA_HOME`, then `CUDA_PATH`;
2. the real compiler behind the `nvcc` on the PATH;
3. `/usr/local/cuda`.

Torch-free and importable on its own, so the tests can drive it with fake
compilers.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field

DEFAULT_ROOT = "/usr/local/cuda"
HEADER = "cuda_runtime.h"


class ToolkitNotFound(RuntimeError):
    """No usable CUDA toolkit; the message lists what was searched and how to fix it."""


@dataclass
class Toolkit:
    root: str                     # what CUDA_HOME must be for torch.utils.cpp_extension
    nvcc: str                     # the real compiler, root/bin/nvcc
    include_dir: str              # the folder holding cuda_runtime.h
    found_by: str                 # which rule of the search order found it
    searched: list[str] = field(default_factory=list)

    @property
    def extra_include_dirs(self) -> list[str]:
        """Include folders torch would not pass by itself (it passes root/include only)."""
        return [] if _same(self.include_dir, os.path.join(self.root, "include")) else [self.include_dir]


def _same(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _header_dir(candidates: list[str]) -> str | None:
    for d in candidates:
        if os.path.isfile(os.path.join(d, HEADER)):
            return d
    return None


def _layout_includes(root: str) -> list[str]:
    """Where a toolkit rooted at `root` keeps its headers: include/, or the
    cross-compilation layout targets/<arch>-linux/include that include/ usually links to."""
    dirs = [os.path.join(root, "include")]
    targets = os.path.join(root, "targets")
    if os.path.isdir(targets):
        dirs += [os.path.join(targets, t, "include") for t in sorted(os.listdir(targets))]
    return dirs


def ask_compiler(nvcc: str, timeout: float = 60.0) -> tuple[str, list[str]] | None:
    """(toolkit root, include folders) as the compiler itself reports them, or None."""
    try:
        run = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    top, includes = None, []
    for line in (run.stdout + run.stderr).splitlines():
        m = re.match(r"#\$ (TOP|INCLUDES)=(.*)$", line.strip())
        if not m:
            continue
        if m.group(1) == "TOP":
            top = m.group(2).strip().strip('"')
        else:
            words = shlex.split(m.group(2))
            includes += [w[2:] for w in words if w.startswith("-I") and len(w) > 2]
    if top is None:
        return None
    return os.path.realpath(top), [os.path.realpath(i) for i in includes]


def _toolkit_at(root: str, found_by: str, searched: list[str], includes: list[str] = ()) -> Toolkit | None:
    nvcc = os.path.join(root, "bin", "nvcc")
    inc = _header_dir(_layout_includes(root) + list(includes))
    if inc is None or not os.path.isfile(nvcc):
        what = [] if os.path.isfile(nvcc) else [f"no {nvcc}"]
        what += [] if inc is not None else [f"no {HEADER} in {', '.join(_layout_includes(root) + list(includes))}"]
        searched.append(f"{found_by}: {root} ({'; '.join(what)})")
        return None
    searched.append(f"{found_by}: {root} (ok)")
    return Toolkit(root=root, nvcc=nvcc, include_dir=inc, found_by=found_by, searched=searched)


def find_toolkit(environ=None, which=shutil.which, default_root: str = DEFAULT_ROOT) -> Toolkit:
    """The toolkit to build with; raises ToolkitNotFound saying what was searched."""
    environ = os.environ if environ is None else environ
    searched: list[str] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = environ.get(var)
        if root:
            tk = _toolkit_at(os.path.realpath(root), f"${var}", searched)
            if tk is None:
                # The user named a toolkit: using another one behind their back is worse than stopping.
                raise ToolkitNotFound(_message(searched, f"${var}={root} is not a usable CUDA toolkit"))
            return tk
    nvcc = which("nvcc")
    if nvcc:
        reported = ask_compiler(nvcc)
        if reported is not None:
            tk = _toolkit_at(reported[0], f"`{nvcc} --dryrun`", searched, reported[1])
            if tk is not None:
                return tk
        else:
            searched.append(f"`{nvcc} --dryrun`: gave no TOP= line")
        real = os.path.realpath(nvcc)
        tk = _toolkit_at(os.path.dirname(os.path.dirname(real)), f"nvcc on the PATH ({real})", searched)
        if tk is not None:
            return tk
    else:
        searched.append("nvcc on the PATH: none")
    tk = _toolkit_at(os.path.realpath(default_root), f"default {default_root}", searched)
    if tk is not None:
        return tk
    raise ToolkitNotFound(_message(searched, "no CUDA toolkit found"))


def _message(searched: list[str], headline: str) -> str:
    lines = [f"specdec-kernels: {headline}, but torch has CUDA, so the CUDA kernels must be built.",
             "Searched, in order:"] + [f"  - {s}" for s in searched] + [
             "Fix: set CUDA_HOME to the toolkit's root (the folder with bin/nvcc and include/cuda_runtime.h),",
             "     or put the toolkit's nvcc first on the PATH,",
             "     or build the CPU kernels only with SPECDEC_CPU_ONLY=1 (the cuda backend is then unavailable)."]
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        tk = find_toolkit()
    except ToolkitNotFound as exc:
        raise SystemExit(str(exc))
    print(f"CUDA toolkit {tk.root} (found by {tk.found_by}); nvcc {tk.nvcc}; headers {tk.include_dir}")
