"""The demo on the shipped models: every greedy method identical to ar; its
prompts come from held-out files only; bad arguments and missing models
give clear errors."""
import importlib.util

import pytest

from specdec_kernels import demo
from specdec_kernels.__main__ import main as cli


def test_shipped_models_load_and_match_their_sizes():
    target, draft, heads = demo.load_models()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(draft) * 10 <= count(target)  # the draft has at most a tenth of the target's parameters
    assert heads.hidden == target.config.hidden_size and heads.vocab == target.config.vocab_size == 256
    files = [p for p in demo.DEFAULT_MODELS.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20


def test_prompts_come_from_held_out_files():
    train, held = demo.stdlib_files()
    assert held and not set(train) & set(held)
    names = {p.name for p in held}
    prompts = demo.held_out_prompts(3, 64)
    assert len(prompts) == 3 and all(name in names and len(p) == 64 for name, p in prompts)
    assert prompts == demo.held_out_prompts(3, 64)


def test_demo_every_greedy_method_is_identical(capsys):
    with pytest.raises(SystemExit) as done:
        cli(["demo", "--prompts", "2", "--batch", "2", "--max-new-tokens", "12", "--prompt-bytes", "96"])
    out = capsys.readouterr().out
    assert done.value.code == 0, out
    for name in demo.METHODS:
        line = next(l for l in out.splitlines() if l.startswith(name + " "))
        assert line.rstrip().endswith("yes"), line


def test_demo_sampled_with_a_verify_rule(capsys):
    """--verify-rule reaches generate (block: the tree methods take traversal, so every method runs)."""
    with pytest.raises(SystemExit) as done:
        cli(["demo", "--prompts", "1", "--max-new-tokens", "8", "--prompt-bytes", "64", "--temperature", "1",
             "--verify-rule", "block"])
    out = capsys.readouterr().out
    assert done.value.code == 0, out
    assert "verify rule block" in out and all(f"{name} " in out for name in demo.METHODS)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_demo_plot(tmp_path):
    rows = [dict(method="ar", speedup=1.0, tau=1.0), dict(method="lookahead", speedup=1.4, tau=2.2)]
    demo.plot(rows, tmp_path / "out.png")
    assert (tmp_path / "out.png").stat().st_size > 1000


def test_demo_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_tiny.py"):
        demo.load_models(tmp_path)
    with pytest.raises(SystemExit, match="--max-new-tokens must be >= 1"):
        cli(["demo", "--max-new-tokens", "0"])
