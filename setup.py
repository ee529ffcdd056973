"""Builds specdec_kernels._C: the CPU kernels always, the CUDA kernels too when
torch was built with CUDA and nvcc is found.

Install with the torch you already have (no build isolation, so pip never
fetches another torch for the build):

    pip install --no-build-isolation -e .

Supported (and what CI and the GPU check run): torch 2.11 or newer, CPU or CUDA
builds (tested: 2.13 CPU, 2.14.1 CUDA 13.0; 2.11 is the GPU machines' torch, which
bench/gpu_check.sh targets but no GPU has run yet); Triton 3.6 or newer for the
triton backend (tested: 3.6, 3.8, 3.9); a CUDA toolkit of torch's CUDA major version.

Environment:
    CUDA_HOME / CUDA_PATH  the CUDA toolkit's root; else the real compiler behind the
                           nvcc on the PATH (wrappers and symlinks followed), else
                           /usr/local/cuda (see tools/cuda_toolkit.py)
    TORCH_CUDA_ARCH_LIST   CUDA archs to compile (default "8.0;9.0a": A100, H100/H200)
    SPECDEC_CPU_ONLY=1     skip the CUDA kernels even where they could be built

With a CUDA build of torch and no usable toolkit the build stops and says what
it searched; it is never built CPU-only behind your back.
"""
import os
import re
import sys
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError as exc:  # pragma: no cover - guidance for a broken install
    raise SystemExit(
        "specdec-kernels builds against the installed torch: install torch first, then "
        "`pip install --no-build-isolation -e .`"
    ) from exc

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT / "tools"))
from cuda_toolkit import ToolkitNotFound, find_toolkit  # noqa: E402

VERSION = re.search(
    r'__version__ = "([^"]+)"', (ROOT / "specdec_kernels" / "_version.py").read_text()
).group(1)
DEFAULT_ARCHS = "8.0;9.0a"


def sources(pattern):
    return sorted(str(p) for p in glob(pattern, root_dir=ROOT))


def cuda_toolkit():
    """The toolkit to build the CUDA kernels with, or None for a CPU-only build."""
    if torch.version.cuda is None:
        return None
    if os.environ.get("SPECDEC_CPU_ONLY") == "1":
        print(f"specdec: SPECDEC_CPU_ONLY=1: building the CPU kernels only under torch "
              f"{torch.__version__} (CUDA {torch.version.cuda})", file=sys.stderr)
        return None
    try:
        toolkit = find_toolkit()
    except ToolkitNotFound as exc:
        raise SystemExit(f"\n{'=' * 78}\n{exc}\n{'=' * 78}") from None
    # torch reads its module global, not the variable, once it is imported: set both.
    os.environ["CUDA_HOME"] = toolkit.root
    cpp_extension.CUDA_HOME = toolkit.root
    print(f"specdec: CUDA toolkit {toolkit.root} (found by {toolkit.found_by}), headers in "
          f"{toolkit.include_dir}", file=sys.stderr)
    return toolkit


def openmp_flags() -> list[str]:
    """``-fopenmp`` at compile time only, when torch's ATen runs on OpenMP.

    ``at::parallel_for`` is header code: without ``-fopenmp`` its
    ``#pragma omp parallel`` is dropped and every CPU kernel runs on one
    thread. Nothing is linked: the ``GOMP_*``/``omp_*`` symbols resolve at
    load time to the OpenMP runtime torch itself loaded (libtorch_cpu's
    dependency), so no second runtime enters the process.
    SPECDEC_NO_OPENMP=1 builds single-threaded CPU kernels.
    """
    if os.environ.get("SPECDEC_NO_OPENMP") == "1":
        return []
    if "OpenMP" not in torch.__config__.parallel_info() or sys.platform == "darwin":
        return []  # torch without OpenMP (or Apple clang, which has no -fopenmp)
    return ["-fopenmp"]


def extension():
    cpp = [s for s in sources("csrc/torch/*.cpp") if not s.endswith("_cuda.cpp")]
    cpp += sources("csrc/cpu/*.cpp")
    include_dirs = [str(ROOT / "csrc" / "include"), str(ROOT / "csrc" / "torch")]
    cxx_flags = ["-O3"] + openmp_flags()
    toolkit = cuda_toolkit()
    if toolkit is None:
        return cpp_extension.CppExtension(
            "specdec_kernels._C", cpp, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
        )
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    defines = ["-DSPECDEC_WITH_CUDA", f'-DSPECDEC_CUDA_ARCHS="{archs}"']
    return cpp_extension.CUDAExtension(
        "specdec_kernels._C",
        cpp + sources("csrc/torch/*_cuda.cpp") + sources("csrc/cuda/*.cu"),
        include_dirs=include_dirs + toolkit.extra_include_dirs,
        extra_compile_args={"cxx": cxx_flags + defines, "nvcc": ["-O3", "-lineinfo"] + defines},
    )


setup(
    name="specdec-kernels",
    version=VERSION,
    description="Fused kernels for the verification step of speculative decoding",
    packages=find_packages(include=["specdec_kernels", "specdec_kernels.*"]),
    python_requires=">=3.10",
    # No upper bound and no CUDA pin: a torch already installed satisfies this (an upper
    # bound would make pip replace a newer torch the user already has).
    # safetensors: the runtime loads Hugging Face checkpoints; tqdm: the demo's progress bar;
    # tokenizers: the demo's draft of another vocabulary loads its tokenizer.json.
    install_requires=["torch>=2.11", "numpy", "safetensors", "tqdm", "tokenizers"],
    extras_require={
        "triton": ["triton>=3.6"],
        # transformers: the runtime's logits are checked against LlamaForCausalLM, and
        # bench/bench_e2e.py and bench/train_tiny.py use it; matplotlib: demo --plot.
        "test": ["pytest", "hypothesis", "triton>=3.6", "transformers"],
        "demo": ["matplotlib", "transformers"],
    },
    package_data={"specdec_kernels": ["data/tiny_stdlib/*.json", "data/tiny_stdlib/*.safetensors",
                                      "data/tiny_stdlib/*/*.json", "data/tiny_stdlib/*/*.safetensors"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
