"""bench/gpu_check_summary.py: the GPU check's verdicts come from its step
records and the sanitizer logs; a failed or timed-out step, or a sanitizer
error, must show in the table and the JSON (CI runs the script itself with
--dry-run, where the device steps only skip)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import gpu_check_summary as summary  # noqa: E402


def _run(tmp_path, steps, logs):
    (tmp_path / "logs").mkdir()
    for name, text in logs.items():
        (tmp_path / "logs" / f"{name}.log").write_text(text)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "bench_verify.json").write_text(json.dumps(
        {"rows": [{"peak_frac": 0.25}, {"peak_frac": 0.5}], "failures": []}))
    (tmp_path / "steps.tsv").write_text("".join("\t".join(map(str, s)) + "\n" for s in steps))
    out_json, out_table = tmp_path / "g.json", tmp_path / "s.txt"
    summary.main(["--steps", str(tmp_path / "steps.tsv"), "--results", str(tmp_path / "results"),
                  "--logs", str(tmp_path / "logs"), "--json", str(out_json), "--table", str(out_table)])
    return json.loads(out_json.read_text()), out_table.read_text()


def test_sanitizer_errors_and_failed_steps_are_reported(tmp_path):
    memcheck = ("== memcheck test_kv_cache_cuda\n========= ERROR SUMMARY: 0 errors\n"
                "== memcheck test_sampling_cuda\n========= Invalid __global__ write of size 4\n"
                "========= ERROR SUMMARY: 3 errors\n== memcheck test_tree_attention_cuda\n")
    steps = [("build", "ok", 100, 240, "pip install"), ("memcheck", "failed (rc 1)", 20, 60, "sanitize memcheck"),
             ("racecheck", "timeout after 90s", 90, 90, "sanitize racecheck"),
             ("bench-verify", "ok", 10, 40, "bench_verify.py")]
    data, text = _run(tmp_path, steps, {"memcheck": memcheck})
    assert data["sanitizers"]["memcheck"] == {"test_kv_cache_cuda": 0, "test_sampling_cuda": 3,
                                              "test_tree_attention_cuda": None}
    assert "test_sampling_cuda: 3 errors" in text and "test_tree_attention_cuda: ? errors" in text
    assert "FAILED: memcheck, racecheck" in text
    assert "2 rows, best 50% of peak bandwidth" in text
    assert data["benchmarks"]["bench_verify"]["rows"][1]["peak_frac"] == 0.5


def test_all_passing_steps_give_a_passing_verdict(tmp_path):
    _, text = _run(tmp_path, [("env", "ok", 1, 20, "env"), ("gpu-tests", "skipped: no device", 0, 0, "pytest")], {})
    assert text.rstrip().endswith("verdict: all steps that ran passed")
