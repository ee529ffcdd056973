"""generate(): draft-model speculative decoding is lossless against plain
autoregressive decoding (greedy: token for token; sampled: in distribution),
for batches of prompts, every schedule and several K."""
import pytest
import torch

from specdec_kernels.runtime import LlamaModel, ModelConfig, generate
from test_verify_lossless import ALPHA, chi_square_pvalue

PROMPTS = [[1, 2, 3, 4, 5], [7], [9, 9, 9, 9, 9, 9, 9, 9, 9], [30, 31]]


def tiny(vocab=64, hidden=128, layers=2, seed=1, std=0.1):
    cfg = ModelConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden, num_layers=layers,
                      num_heads=hidden // 64, num_kv_heads=1, head_dim=64)
    return LlamaModel.random(cfg, seed=seed, std=std)


@pytest.fixture(scope="module")
def models():
    return tiny(), tiny(hidden=64, layers=1, seed=2)


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("schedule", ["constant", "heuristic", "dynamic"])
def test_greedy_draft_equals_ar(models, k, schedule):
    target, unrelated = models
    ar = generate(target, PROMPTS, max_new_tokens=14)
    assert [len(t) for t in ar.tokens] == [14] * len(PROMPTS)
    same = generate(target, PROMPTS, method="draft", draft_model=target, num_draft_tokens=k, schedule=schedule,
                    max_new_tokens=14)
    other = generate(target, PROMPTS, method="draft", draft_model=unrelated, num_draft_tokens=k,
                     schedule=schedule, max_new_tokens=14)
    assert same.tokens == ar.tokens and other.tokens == ar.tokens
    if schedule == "constant":
        assert same.stats.tau == k + 1  # a drafter equal to the target is always right
    assert other.stats.tau < 1.5  # an unrelated drafter almost never is
    assert same.stats.target_passes < ar.stats.target_passes or k == 1 and schedule == "dynamic"


def test_eos_stops_each_sequence(models):
    target, _ = models
    ar = generate(target, PROMPTS, max_new_tokens=10)
    eos = ar.tokens[0][3]
    out = generate(target, PROMPTS, method="draft", draft_model=target, num_draft_tokens=4, max_new_tokens=10,
                   eos_token_id=eos)
    for full, got in zip(ar.tokens, out.tokens):
        cut = full[:full.index(eos) + 1] if eos in full else full
        assert got == cut


def test_cache_holds_only_accepted_tokens(models):
    """Many rejections (an unrelated drafter, K = 8): after every rollback the
    target cache holds no more blocks than the committed tokens need, and
    everything is freed at the end (generate checks that itself)."""
    target, unrelated = models
    out = generate(target, PROMPTS, method="draft", draft_model=unrelated, num_draft_tokens=8, max_new_tokens=20,
                   block_size=4)
    need = sum(-(-(len(p) + 20) // 4) for p in PROMPTS)
    assert out.stats.target_passes > 15  # mostly rejected steps
    assert out.stats.peak_cache_blocks <= need


def exact_two_token_distribution(model, prompt, vocab, temperature):
    from specdec_kernels.reference.sampling import target_probs
    from specdec_kernels.runtime.generate import CachedModel

    def next_probs(tokens):
        runner = CachedModel(model, 16, 16)
        runner.start(0)
        logits, _, _ = runner.run([0], [tokens], prefill=True)
        return target_probs(logits[-1], temperature, 0, 1.0).double()

    p0 = next_probs(prompt)
    p1 = torch.stack([next_probs(prompt + [a]) for a in range(vocab)])
    return p0, p0[:, None] * p1


def _uniform_q(original):
    def wrong(tokens, q, counts=None):
        if q is not None:
            q[:, :tokens.shape[1]] = 1.0 / q.shape[-1]
        return original(tokens, q, counts)
    return wrong


@pytest.mark.parametrize("method", ["ar", "draft", "draft_heuristic", "draft_fixed_shape", "draft_with_wrong_q",
                                    "draft_block", "draft_traversal", "draft_traversal_with_wrong_q"])
def test_sampled_draft_is_distributed_as_the_target(monkeypatch, method):
    """Chi-square (alpha 1e-3, fixed seed) of the first token and of the first
    two tokens over 1500 copies of one prompt in one batch, against the exact
    distribution computed from the target's logits; with the token rule, and
    with verify_rule="block" and "traversal" (``_block``, ``_traversal``).
    Control: reporting the wrong q (uniform instead of the drafter's) must
    fail the same test, under the token and the traversal rule."""
    rule = next((r for r in ("block", "traversal") if f"_{r}" in method), "token")
    method = method.replace(f"_{rule}", "")
    broken = method == "draft_with_wrong_q"
    if broken:
        from specdec_kernels.runtime import drafters

        monkeypatch.setattr(drafters, "chain_drafts", _uniform_q(drafters.chain_drafts))
        method = "draft"
    schedule = "heuristic" if method in ("draft_heuristic", "draft_fixed_shape") else "constant"  # ragged budgets
    if method == "draft_fixed_shape":  # the GPU layout: every draft K nodes, -1 and zero q past its own
        from specdec_kernels.runtime.drafters import DraftModelDrafter

        monkeypatch.setattr(DraftModelDrafter, "fixed_shape", True)
    method = "draft" if method.startswith("draft_") and method != "draft_with_wrong_q" else method
    vocab, temperature = 6, 1.0
    out = sampled_pairs(method, schedule, rule)
    first = torch.tensor([t[0] for t in out.tokens])
    pair = torch.tensor([t[0] * vocab + t[1] for t in out.tokens])
    p0, joint = exact_two_token_distribution(sampled_models()[0], [1, 2, 3], vocab, temperature)
    p_first = chi_square_pvalue(torch.bincount(first, minlength=vocab), p0)
    p_pair = chi_square_pvalue(torch.bincount(pair, minlength=vocab * vocab), joint)
    if broken:
        assert min(p_first, p_pair) < ALPHA, (p_first, p_pair)
    else:
        assert p_first > ALPHA and p_pair > ALPHA, (p_first, p_pair)


def sampled_models():
    """The vocabulary-6 target and drafter of the sampled tests (built afresh: cheap, and deterministic)."""
    return tiny(vocab=6, seed=5, std=0.4), tiny(vocab=6, hidden=64, layers=1, seed=6, std=0.4)


def sampled_pairs(method="draft", schedule="constant", rule="token", n=1500, max_new_tokens=None):
    """Two tokens (default; 6 with the heuristic schedule, whose budgets 2 and
    5 meet) of ``n`` copies of prompt [1, 2, 3], temperature 1, seed 11."""
    target, drafter = sampled_models()
    if max_new_tokens is None:
        max_new_tokens = 2 if schedule == "constant" else 6
    return generate(target, [[1, 2, 3]] * n, method=method, draft_model=drafter, num_draft_tokens=3,
                    schedule=schedule, max_new_tokens=max_new_tokens,
                    temperature=1.0, seed=11, verify_rule=rule)


def test_verify_rule_reaches_the_verify_step():
    """Same seed, same drafts and draws: on chains "block" and "traversal" are
    one rule (identical output), and "token" decides differently somewhere
    (so the rule reached the verify op). One step per sequence (1500 copies
    of the prompt, one new token), so tau is the mean accepted length of a
    first step: block's is at least token's (block verification is optimal;
    about 1.34 against 1.31 here, the noise a third of that gap)."""
    token, block, traversal = (sampled_pairs(rule=r, max_new_tokens=1) for r in ("token", "block", "traversal"))
    assert block.tokens == traversal.tokens and block.stats.tau == traversal.stats.tau
    assert block.tokens != token.tokens
    assert block.stats.step_sequences == token.stats.step_sequences == 1500
    assert block.stats.tau > token.stats.tau, (block.stats.tau, token.stats.tau)


@pytest.mark.parametrize("rule", ["block", "traversal"])
def test_greedy_ignores_the_verify_rule(models, rule):
    target, unrelated = models
    ar = generate(target, PROMPTS, max_new_tokens=10)
    out = generate(target, PROMPTS, method="draft", draft_model=unrelated, num_draft_tokens=3, max_new_tokens=10,
                   verify_rule=rule)
    assert out.tokens == ar.tokens


def test_bad_input(models):
    target, unrelated = models
    cases = [(dict(prompts=[]), "prompts is empty"), (dict(prompts=[[1], []]), r"prompts\[1\] is empty"),
             (dict(prompts=[[1, 64]]), "token id 64 outside"), (dict(max_new_tokens=0), "max_new_tokens"),
             (dict(method="draft"), "needs draft_model"), (dict(method="beam"), "method must be"),
             (dict(method="draft", draft_model=tiny(vocab=65)), "vocabulary"),
             (dict(method="draft", draft_model=unrelated, num_draft_tokens=0), "num_draft_tokens"),
             (dict(verify_rule="blocks"), r"verify_rule must be one of \('token', 'block', 'traversal'\), "
                                          "got 'blocks'"),
             (dict(verify_rule=None, temperature=0.0), "verify_rule must be one of")]
    for override, message in cases:
        kwargs = dict(prompts=[[1, 2]], max_new_tokens=3)
        kwargs.update(override)
        with pytest.raises(ValueError, match=message):
            generate(target, kwargs.pop("prompts"), **kwargs)


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (3, 1.0), (0, 0.7), (4, 0.5), (1, 1.0)])
def test_batched_filtered_probs_follow_the_verify_rule(top_k, top_p):
    """The draft model's batched filter equals the verify ops' per-row rule
    (reference target_probs), ties at the top-k / top-p thresholds included;
    its inverse-CDF draws only pick tokens of positive probability."""
    from specdec_kernels.reference.sampling import target_probs
    from specdec_kernels.runtime.drafters import filtered_probs, sample_rows

    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(-3, 4, (64, 11), generator=gen).float()  # many ties
    got = filtered_probs(logits, 0.8, top_k, top_p)
    want = torch.stack([target_probs(row, 0.8, top_k, top_p) for row in logits])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert torch.equal(got > 0, want > 0)
    edges = torch.cat([torch.zeros(1), torch.rand(63, generator=gen)])
    picked = sample_rows(got, edges)
    assert bool((got.gather(1, picked[:, None]) > 0).all())
    # u * total can round up to the total: still the last token with mass, not the zero-mass tail.
    assert sample_rows(torch.tensor([[0.5, 0.5, 0.0, 0.0]]), torch.ones(1)).tolist() == [1]
