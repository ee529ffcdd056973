"""The compiled ops are real torch operators (schemas, CPU/Meta kernels,
torch.compile), and backend choice follows the documented precedence."""
import json
import os
import subprocess
import sys

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import backends
from kv_scenarios import make_scenario, random_paths


def _append_inputs():
    s = make_scenario(0, batch=2, num_heads=2, head_dim=64, dtype=torch.float16, block_size=4, min_new=1)
    return (s.k, s.v, s.k_cache[0], s.v_cache[0], s.block_table, s.prefix_lens, s.qo_indptr)


def _compact_inputs():
    s = make_scenario(1, batch=2, num_heads=2, head_dim=64, dtype=torch.float16, block_size=4, layers=2,
                      min_new=3)
    nodes, counts = random_paths(1, s.new_lens)
    return ([s.k_cache], [s.v_cache], s.block_table, s.prefix_lens, nodes, counts)


def test_schemas_are_registered():
    assert str(torch.ops.specdec.append_kv.default._schema).startswith("specdec::append_kv(Tensor k, Tensor v, Tensor(a!) k_cache")
    assert "Tensor(a!)[] k_caches" in str(torch.ops.specdec.compact_kv.default._schema)


@pytest.mark.parametrize("inputs", [_append_inputs, _compact_inputs], ids=["append_kv", "compact_kv"])
def test_opcheck(inputs):
    op = torch.ops.specdec.append_kv if inputs is _append_inputs else torch.ops.specdec.compact_kv
    torch.library.opcheck(op, inputs(), test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_meta_kernels_check_shapes():
    args = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in _append_inputs()]
    torch.ops.specdec.append_kv(*args)
    args[0] = args[0][:, :1]
    with pytest.raises(RuntimeError, match="k must be"):
        torch.ops.specdec.append_kv(*args)


def test_torch_compile_fullgraph_matches_eager():
    def step(k, v, kc, vc, bt, prefix, indptr, nodes, counts):
        torch.ops.specdec.append_kv(k, v, kc[0], vc[0], bt, prefix, indptr)
        torch.ops.specdec.compact_kv([kc], [vc], bt, prefix, nodes, counts)
        return kc.sum()

    s = make_scenario(2, batch=2, num_heads=2, head_dim=64, dtype=torch.float32, block_size=4, min_new=3)
    nodes, counts = random_paths(2, s.new_lens)
    args = (s.k, s.v, s.k_cache, s.v_cache, s.block_table, s.prefix_lens, s.qo_indptr, nodes, counts)
    eager_k, eager_v = s.k_cache.clone(), s.v_cache.clone()
    step(s.k, s.v, eager_k, eager_v, *args[4:])
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    compiled(*args)
    assert torch.equal(s.k_cache, eager_k) and torch.equal(s.v_cache, eager_v)


def test_backend_precedence(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("SPECDEC_BACKEND", raising=False)
    assert backends.choose("x", "auto", cpu) == "cpu"
    monkeypatch.setenv("SPECDEC_BACKEND", "reference")
    assert backends.choose("x", "auto", cpu) == "reference"
    assert backends.choose("x", "cpu", cpu) == "cpu"  # an explicit argument wins over the variable
    monkeypatch.setenv("SPECDEC_BACKEND", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(sk.BackendUnavailableError, match="SPECDEC_BACKEND='cuda'"):
            backends.choose("x", "auto", cpu)


def test_explicit_backend_that_cannot_run_raises(monkeypatch):
    monkeypatch.delenv("SPECDEC_BACKEND", raising=False)
    with pytest.raises(sk.BackendUnavailableError, match="backend='cuda'"):
        sk.append_kv(*_append_inputs(), backend="cuda")
    with pytest.raises(sk.BackendUnavailableError, match="unknown backend 'fast'"):
        sk.append_kv(*_append_inputs(), backend="fast")


def test_auto_never_picks_interpreted_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("SPECDEC_BACKEND", raising=False)
    assert backends.auto_choice("x", torch.device("cpu")) in ("cpu", "reference")


def test_auto_uses_the_env_backend_end_to_end(monkeypatch):
    """SPECDEC_BACKEND really routes the call: the reference backend needs no
    extension, so breaking the extension's op must not matter."""
    monkeypatch.setenv("SPECDEC_BACKEND", "reference")
    calls = []
    monkeypatch.setattr(sk.reference, "append_kv", lambda *a: calls.append(a))
    sk.append_kv(*_append_inputs())
    assert len(calls) == 1


def test_info_reports_versions_and_backends():
    facts = sk.info()
    assert facts["specdec_kernels"] == sk.__version__
    assert facts["torch"] == torch.__version__
    cpu = facts["ops"]["compact_kv"]["cpu"]
    assert cpu["backends"]["reference"] == "available"
    assert cpu["backends"]["cpu"] == "available"
    assert cpu["auto"] == "cpu"
    if not torch.cuda.is_available():
        assert "cuda" not in facts["ops"]["compact_kv"]
    # A CUDA build of the extension reports its archs with or without a GPU present
    # (CI builds one on a GPU-less machine); a CPU-only build reports none.
    if facts["extension_cuda"]:
        assert torch.version.cuda is not None
        expected = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0a").replace(" ", ";").split(";")
        assert facts["cuda_archs"] == [a for a in expected if a], facts["cuda_archs"]
        assert facts["extension_build"].startswith("cuda+cpu")
        if not torch.cuda.is_available():
            assert facts["cuda_attention"].startswith("no CUDA device"), facts["cuda_attention"]
        elif torch.cuda.get_device_capability() == (9, 0) and "9.0a" in facts["cuda_archs"]:
            want = {"mma": "mma.sync", "simt": "CUDA-core"}.get(os.environ.get("SPECDEC_TREE_ATTENTION_KERNEL"), "wgmma")
            assert facts["cuda_attention"].startswith(want), facts["cuda_attention"]
    else:
        assert facts["cuda_attention"].startswith("none: the extension has no CUDA kernels")
        assert facts["cuda_archs"] == []
        assert facts["extension_build"].startswith("cpu-only")
        if torch.version.cuda is not None:
            assert "under a CUDA torch" in facts["extension_build"]


def test_info_command_line():
    out = subprocess.run([sys.executable, "-m", "specdec_kernels", "info", "--json"], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out)["specdec_kernels"] == sk.__version__
    text = subprocess.run([sys.executable, "-m", "specdec_kernels", "info"], capture_output=True, text=True,
                          check=True).stdout
    assert "compact_kv:" in text and "auto ->" in text


def test_tree_attention_opcheck_and_compile():
    from attention_scenarios import make_case

    case = make_case(3, kind="tree", batch=2, hq=4, hkv=2, head_dim=64, dtype=torch.float32, block_size=4,
                     max_prefix=10)
    args = case.args() + (0.125,)
    torch.library.opcheck(torch.ops.specdec.tree_attention, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    eager = torch.ops.specdec.tree_attention(*args)
    compiled = torch.compile(lambda *a: torch.ops.specdec.tree_attention(*a), backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(*args), eager):
        assert torch.equal(got, want)
