"""Every Triton kernel compiles for sm_80 and sm_90 (without a GPU). The
interpreter accepts code the compiler rejects (pointer casts, runtime loop
bounds, constexpr branches); this catches it before a GPU session does."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


def test_triton_kernels_compile_for_sm80_and_sm90():
    script = Path(__file__).with_name("triton_aot.py")
    root = str(script.parent.parent)  # this checkout's package, not whichever one is installed
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    run = subprocess.run([sys.executable, str(script), "80", "90"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "compiled" in run.stdout.splitlines()[-1], run.stdout
