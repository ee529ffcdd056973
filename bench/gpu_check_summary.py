"""Packs what bench/gpu_check.sh measured into one JSON and one table.

    python bench/gpu_check_summary.py --steps steps.tsv --results DIR --logs DIR \
        --json gpu_check.json --table summary.txt

Reads the step records (name, status, seconds, cap, command; tab-separated),
every benchmark JSON under --results, and the compute-sanitizer logs, whose
"ERROR SUMMARY: N errors" lines are the sanitizer's verdicts.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
from pathlib import Path

SANITIZERS = ("memcheck", "racecheck", "synccheck", "initcheck")


def read_steps(path: Path) -> list[dict]:
    steps = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 5:
            continue
        name, status, seconds, cap, command = parts[:5]
        steps.append({"step": name, "status": status, "seconds": int(seconds), "cap_s": int(cap),
                      "command": command})
    return steps


def sanitizer_verdicts(logs: Path) -> dict:
    """Per tool and test binary: the error count the sanitizer printed (None if it printed none)."""
    out = {}
    for tool in SANITIZERS:
        log = logs / f"{tool}.log"
        if not log.exists():
            continue
        per_test, current = {}, None
        for line in log.read_text(errors="replace").splitlines():
            m = re.match(rf"== {tool} (\S+)", line)
            if m:
                current = m.group(1)
                per_test[current] = None
                continue
            m = re.search(r"ERROR SUMMARY: (\d+) error", line)
            if m and current is not None:
                per_test[current] = int(m.group(1))
        out[tool] = per_test
    return out


def bench_summary(name: str, payload: dict) -> str:
    """One line per benchmark: rows measured and the best fraction of the bandwidth peak."""
    rows = payload.get("rows") or []
    fracs = [r.get("frac_peak", r.get("peak_frac")) for r in rows if isinstance(r, dict)]
    fracs = [f for f in fracs if isinstance(f, (int, float))]
    failed = payload.get("failed") or payload.get("failures") or []
    text = f"{len(rows)} rows"
    if fracs:
        text += f", best {max(fracs):.0%} of peak bandwidth"
    if failed:
        text += f", {len(failed)} failed"
    return text


def environment() -> dict:
    facts = {"python": platform.python_version(), "machine": platform.node()}
    try:
        import torch

        facts.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                     device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
        import triton

        facts["triton"] = triton.__version__
    except Exception as exc:  # the summary must still be written when torch is broken
        facts["import_error"] = f"{type(exc).__name__}: {exc}"
    return facts


def table(steps: list[dict], benches: dict, verdicts: dict) -> str:
    lines = [f"{'step':20} {'status':34} {'s':>5} {'cap':>5}  detail", "-" * 90]
    for s in steps:
        detail = ""
        if s["step"] in verdicts:
            detail = ", ".join(f"{t}: {'?' if n is None else n} errors" for t, n in verdicts[s["step"]].items())
        if s["step"].startswith("bench-"):
            key = "bench_" + s["step"][len("bench-"):]
            if key in benches:
                detail = bench_summary(key, benches[key])
        lines.append(f"{s['step']:20} {s['status'][:34]:34} {s['seconds']:5d} {s['cap_s']:5d}  {detail}")
    bad = [s["step"] for s in steps if s["status"].startswith(("failed", "timeout"))]
    lines.append("-" * 90)
    lines.append("verdict: " + ("all steps that ran passed" if not bad else "FAILED: " + ", ".join(bad)))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=Path, required=True)
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--logs", type=Path, required=True)
    p.add_argument("--budget", type=int)
    p.add_argument("--dry-run", type=int, default=0)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--table", type=Path, required=True)
    args = p.parse_args(argv)
    steps = read_steps(args.steps)
    benches = {}
    for f in sorted(args.results.glob("*.json")):
        try:
            benches[f.stem] = json.loads(f.read_text())
        except ValueError as exc:
            benches[f.stem] = {"unreadable": str(exc)}
    verdicts = sanitizer_verdicts(args.logs)
    text = table(steps, benches, verdicts)
    payload = {"benchmark": "gpu_check", "dry_run": bool(args.dry_run), "budget_s": args.budget,
               "environment": environment(), "steps": steps, "sanitizers": verdicts, "benchmarks": benches,
               "summary": text.splitlines()}
    args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    args.table.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
