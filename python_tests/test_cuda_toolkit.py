"""setup.py's CUDA toolkit search (tools/cuda_toolkit.py), driven with fake
compilers: wrappers, symlinks, explicit settings, and nothing at all."""
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from cuda_toolkit import ToolkitNotFound, find_toolkit  # noqa: E402


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _toolkit(base: Path, *, dryrun=True, include_link=True) -> Path:
    """A fake toolkit laid out as NVIDIA's: headers under targets/, include/ linking there."""
    root = base / "cuda-13.0"
    inc = root / "targets" / "x86_64-linux" / "include"
    inc.mkdir(parents=True)
    (inc / "cuda_runtime.h").write_text("#pragma once\n")
    if include_link:
        (root / "include").symlink_to(inc)
    body = (f'echo "#\\$ TOP={root}/bin/.."\n'
            f'echo "#\\$ INCLUDES=\\"-I{root}/bin/../targets/x86_64-linux/include\\"  "\n') if dryrun else "exit 1\n"
    _script(root / "bin" / "nvcc", body)
    return root


def _which(path):
    return lambda name: str(path) if name == "nvcc" else None


def test_wrapper_script_is_followed_to_the_real_compiler(tmp_path):
    root = _toolkit(tmp_path)
    wrapper = _script(tmp_path / "usr" / "local" / "bin" / "nvcc", f'exec {root}/bin/nvcc "$@"\n')
    tk = find_toolkit(environ={}, which=_which(wrapper), default_root=str(tmp_path / "none"))
    assert tk.root == str(root.resolve())
    assert tk.nvcc == str(root.resolve() / "bin" / "nvcc")
    assert "--dryrun" in tk.found_by
    assert tk.extra_include_dirs == []  # include/ links to the headers: torch's -I root/include will do


def test_symlinked_compiler_without_dryrun_resolves_the_link(tmp_path):
    root = _toolkit(tmp_path, dryrun=False)
    link = tmp_path / "bin" / "nvcc"
    link.parent.mkdir()
    link.symlink_to(root / "bin" / "nvcc")
    tk = find_toolkit(environ={}, which=_which(link), default_root=str(tmp_path / "none"))
    assert tk.root == str(root.resolve())
    assert "gave no TOP" in tk.searched[0]


def test_headers_only_under_targets_are_added_to_the_include_path(tmp_path):
    root = _toolkit(tmp_path, include_link=False)
    tk = find_toolkit(environ={}, which=_which(root / "bin" / "nvcc"), default_root=str(tmp_path / "none"))
    assert tk.extra_include_dirs == [str((root / "targets" / "x86_64-linux" / "include").resolve())]


def test_cuda_home_wins_and_a_wrong_one_is_an_error(tmp_path):
    root = _toolkit(tmp_path)
    other = _toolkit(tmp_path / "other")
    tk = find_toolkit(environ={"CUDA_HOME": str(root)}, which=_which(other / "bin" / "nvcc"))
    assert tk.root == str(root.resolve()) and tk.found_by == "$CUDA_HOME"
    tk = find_toolkit(environ={"CUDA_PATH": str(root)}, which=_which(None))
    assert tk.found_by == "$CUDA_PATH"
    with pytest.raises(ToolkitNotFound, match=r"\$CUDA_HOME=.*/nowhere is not a usable CUDA toolkit"):
        find_toolkit(environ={"CUDA_HOME": str(tmp_path / "nowhere")}, which=_which(other / "bin" / "nvcc"))


def test_nothing_found_says_what_was_searched_and_how_to_fix_it(tmp_path):
    bogus = _script(tmp_path / "bin" / "nvcc", "exit 1\n")  # a compiler with no toolkit around it
    with pytest.raises(ToolkitNotFound) as err:
        find_toolkit(environ={}, which=_which(bogus), default_root=str(tmp_path / "cuda"))
    msg = str(err.value)
    for part in ("--dryrun", str(tmp_path / "cuda"), "cuda_runtime.h", "CUDA_HOME", "SPECDEC_CPU_ONLY=1"):
        assert part in msg, (part, msg)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on this machine")
def test_this_machines_toolkit_is_found():
    tk = find_toolkit(environ={})
    assert os.path.isfile(os.path.join(tk.include_dir, "cuda_runtime.h"))
    assert os.path.isfile(tk.nvcc) and not tk.nvcc.startswith("/usr/local/bin")


@pytest.mark.skipif(torch.version.cuda is None, reason="setup.py builds CPU-only under a CPU torch")
def test_setup_stops_loudly_under_a_cuda_torch_without_a_toolkit(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_PATH", "SPECDEC_CPU_ONLY")}
    env["CUDA_HOME"] = str(tmp_path / "no-toolkit")
    run = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert "not a usable CUDA toolkit" in run.stderr and "SPECDEC_CPU_ONLY=1" in run.stderr, run.stderr
    env["SPECDEC_CPU_ONLY"] = "1"
    run = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0 and "building the CPU kernels only" in run.stderr, run.stderr
