"""tools/check_sass.py's rules on made-up resource reports: each defect the
check exists for (a missing tensor-core instruction, a spill, too many
registers or too much shared memory for the occupancy planned, an unknown
kernel) must fail it, and a clean report must pass. CI runs the check itself
on the real SASS."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import check_sass  # noqa: E402

MMA = "tree_attention_mma_kernel<__nv_bfloat16, 128, 4>"
GOOD_SASS = {"LDSM": 40, "HMMA": 64, "LDGSTS": 25}


def report(**over):
    k = {"regs": 230, "stack": 0, "static_smem": 0, "local": 0, "sass": dict(GOOD_SASS)}
    k.update(over)
    return {("sm_80", MMA): k}


def failures(kernels, smem=72064):
    return check_sass.check(kernels, {MMA: smem})[1]


def test_clean_report_passes():
    assert failures(report()) == []


def test_missing_instruction_fails():
    for op in ("LDSM", "HMMA", "LDGSTS"):
        sass = dict(GOOD_SASS)
        del sass[op]
        assert any(f"no {op}" in f for f in failures(report(sass=sass))), op


def test_spills_fail():
    assert any("LDL" in f for f in failures(report(sass={**GOOD_SASS, "LDL": 2})))
    assert any("stack" in f for f in failures(report(stack=16)))


def test_occupancy_limits_fail():
    # 4 warps, 2 CTAs per SM: 257 registers do not fit 64 K.
    assert any("registers" in f for f in failures(report(regs=257)))
    # Two CTAs of 86 KB do not fit an A100 SM.
    assert any("shared memory" in f for f in failures(report(), smem=86 * 1024))
    # Over the 99 KB a CTA may have on sm_86/89.
    assert any("per CTA" in f for f in failures(report(), smem=100 * 1024))


def test_unknown_kernel_fails():
    kernels = {("sm_80", "tree_attention_new_kernel<float, 64>"): report()[("sm_80", MMA)]}
    assert any("does not know" in f for f in check_sass.check(kernels, {})[1])


def test_cuda_core_fp16_builds_are_exempt_from_occupancy():
    k = report(regs=255)[("sm_80", MMA)]
    k["sass"] = {}
    name = "tree_attention_kernel<__half, 256>"
    assert check_sass.check({("sm_80", name): k}, {name: 89600})[1] == []
    name = "tree_attention_kernel<float, 256>"
    assert check_sass.check({("sm_80", name): k}, {name: 89600})[1] != []


WGMMA = "tree_attention_wgmma_kernel<__nv_bfloat16, 128, 64>"  # 256 threads, 2 CTAs per SM
WGMMA_SASS = {"HGMMA": 12, "LDGSTS": 33, "ARRIVES": 8, "SYNCS": 20, "USETMAXREG": 2, "WGDEPBAR": 2}


def test_wgmma_kernel_needs_its_pipeline_on_sm90a_only():
    k = {"regs": 128, "stack": 0, "static_smem": 0, "local": 0, "sass": dict(WGMMA_SASS)}
    assert check_sass.check({("sm_90a", WGMMA): k}, {WGMMA: 86 * 1024})[1] == []
    for op in ("HGMMA", "LDGSTS", "ARRIVES", "SYNCS", "USETMAXREG"):
        without = dict(k, sass={o: n for o, n in WGMMA_SASS.items() if o != op})
        assert any(f"no {op}" in f for f in check_sass.check({("sm_90a", WGMMA): without}, {WGMMA: 86 * 1024})[1])
    # Two CTAs of 114 KB do not fit an H100 SM (228 KB, 1 KB reserved each).
    assert any("shared memory" in f for f in check_sass.check({("sm_90a", WGMMA): k}, {WGMMA: 114 * 1024})[1])
    # 129 registers x 256 threads x 2 CTAs do not fit 65,536.
    assert any("registers" in f for f in check_sass.check({("sm_90a", WGMMA): dict(k, regs=136)},
                                                          {WGMMA: 86 * 1024})[1])
    # The sm_80 build is a trap stub: nothing to require of it but no spills.
    stub = {"regs": 4, "stack": 0, "static_smem": 0, "local": 0, "sass": {}}
    assert check_sass.check({("sm_80", WGMMA): stub}, {WGMMA: 86 * 1024})[1] == []


def test_wgmma_configs_match_the_check():
    assert check_sass.wgmma_config("tree_attention_wgmma_kernel<__half, 64, 64>") == (256, 2, 1)
    assert check_sass.wgmma_config("tree_attention_wgmma_kernel<__half, 128, 128>") == (384, 1, 1)
    assert check_sass.wgmma_config("tree_attention_wgmma_kernel<__half, 128, 256>") == (384, 1, 2)


def test_generated_wgmma_ptx_is_up_to_date():
    import gen_wgmma_ptx
    assert gen_wgmma_ptx.main(["--check"]) == 0, "run python tools/gen_wgmma_ptx.py"


def test_serialised_wgmma_fails():
    k = {"regs": 128, "stack": 0, "static_smem": 0, "local": 0, "sass": dict(WGMMA_SASS, WGDEPBAR=7)}
    assert any("serialised" in f for f in check_sass.check({("sm_90a", WGMMA): k}, {WGMMA: 86 * 1024})[1])
    # Two m-tiles per consumer warpgroup: four waits are the design, five are not.
    two = "tree_attention_wgmma_kernel<__half, 128, 256>"
    k = dict(k, regs=168, sass=dict(WGMMA_SASS, WGDEPBAR=4))
    assert check_sass.check({("sm_90a", two): k}, {two: 180 * 1024})[1] == []
    k = dict(k, sass=dict(WGMMA_SASS, WGDEPBAR=5))
    assert any("serialised" in f for f in check_sass.check({("sm_90a", two): k}, {two: 180 * 1024})[1])
