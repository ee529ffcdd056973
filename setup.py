"""Builds specdec_kernels._C: the CPU kernels always, the CUDA kernels too when
torch was built with CUDA and nvcc is found.

Install with the torch you already have (no build isolation, so pip never
fetches another torch for the build):

    pip install --no-build-isolation -e .

Environment:
    TORCH_CUDA_ARCH_LIST  CUDA archs to compile (default "8.0;9.0a": A100, H100/H200)
    SPECDEC_CPU_ONLY=1    skip the CUDA kernels even where they could be built
"""
import os
import re
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
VERSION = re.search(
    r'__version__ = "([^"]+)"', (ROOT / "specdec_kernels" / "_version.py").read_text()
).group(1)
DEFAULT_ARCHS = "8.0;9.0a"


def sources(pattern):
    return sorted(str(p) for p in glob(pattern, root_dir=ROOT))


def with_cuda():
    if os.environ.get("SPECDEC_CPU_ONLY") == "1":
        return False
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def extension():
    cpp = [s for s in sources("csrc/torch/*.cpp") if not s.endswith("_cuda.cpp")]
    cpp += sources("csrc/cpu/*.cpp")
    include_dirs = [str(ROOT / "csrc" / "include"), str(ROOT / "csrc" / "torch")]
    cxx_flags = ["-O3"]
    if not with_cuda():
        return cpp_extension.CppExtension(
            "specdec_kernels._C", cpp, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
        )
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    defines = ["-DSPECDEC_WITH_CUDA", f'-DSPECDEC_CUDA_ARCHS="{archs}"']
    return cpp_extension.CUDAExtension(
        "specdec_kernels._C",
        cpp + sources("csrc/torch/*_cuda.cpp") + sources("csrc/cuda/*.cu"),
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags + defines, "nvcc": ["-O3", "-lineinfo"] + defines},
    )


setup(
    name="specdec-kernels",
    version=VERSION,
    description="Fused kernels for the verification step of speculative decoding",
    packages=find_packages(include=["specdec_kernels", "specdec_kernels.*"]),
    python_requires=">=3.10",
    # No upper bound and no CUDA pin: a torch already installed satisfies this.
    # safetensors: the runtime loads Hugging Face checkpoints; tqdm: the demo's progress bar.
    install_requires=["torch>=2.4", "numpy", "safetensors", "tqdm"],
    extras_require={
        "triton": ["triton>=3.0"],
        # transformers: the runtime's logits are checked against LlamaForCausalLM, and
        # bench/bench_e2e.py and bench/train_tiny.py use it; matplotlib: demo --plot.
        "test": ["pytest", "hypothesis", "triton>=3.0", "transformers"],
        "demo": ["matplotlib", "transformers"],
    },
    package_data={"specdec_kernels": ["data/tiny_stdlib/*.json", "data/tiny_stdlib/*.safetensors",
                                      "data/tiny_stdlib/*/*.json", "data/tiny_stdlib/*/*.safetensors"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
