"""Medusa, EAGLE, lookahead and prompt-lookup decoding in generate(): greedy output
equals method="ar" token for token; sampled output is distributed as "ar"'s
(chi-square, alpha 1e-3 per check, fixed seed); their data structures
(Medusa heads, n-gram pool, prompt lookup) against plain Python models."""
import pytest
import torch

from specdec_kernels.runtime import generate
from specdec_kernels.runtime.eagle import EagleHead
from specdec_kernels.runtime.eagle_drafter import EagleDrafter
from specdec_kernels.runtime.lookahead import NgramPool
from specdec_kernels.runtime.medusa import MedusaDrafter, MedusaHeads
from specdec_kernels.runtime.prompt_lookup import lookup
from specdec_kernels.trees import MC_SIM_7B_63, Tree
from test_runtime_generate import PROMPTS, exact_two_token_distribution, tiny
from test_verify_lossless import ALPHA, chi_square_pvalue

REPETITIVE = [[5, 6, 7, 8] * 6, [1, 2, 3] * 5 + [1], [9, 9, 9, 9, 9], [4, 11, 4, 11, 4, 11, 4, 11, 4]]
SMALL_CHOICES = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1)]


@pytest.fixture(scope="module")
def target():
    return tiny(vocab=32, seed=3, std=0.3)


@pytest.fixture(scope="module")
def ar_tokens(target):
    return generate(target, PROMPTS + REPETITIVE, max_new_tokens=24).tokens


def heads_for(model, num_heads=4, seed=1, std=0.1):
    cfg = model.config
    return MedusaHeads.random(cfg.hidden_size, cfg.vocab_size, num_heads=num_heads, seed=seed, std=std)


GREEDY_CASES = {
    "medusa_mc_sim_7b_63": ("medusa", {}),
    "medusa_small_tree": ("medusa", dict(medusa_choices=SMALL_CHOICES, heads=3)),
    "lookahead_default": ("lookahead", {}),
    "lookahead_w3_n3_g2": ("lookahead", dict(lookahead_window=3, lookahead_ngram=3, lookahead_guesses=2)),
    "lookahead_w1_n2_g1": ("lookahead", dict(lookahead_window=1, lookahead_ngram=2, lookahead_guesses=1)),
    "lookahead_w4_n4_g0": ("lookahead", dict(lookahead_window=4, lookahead_ngram=4, lookahead_guesses=0)),
    "prompt_lookup_default": ("prompt_lookup", {}),
    "prompt_lookup_n1_k3": ("prompt_lookup", dict(max_ngram=1, num_draft_tokens=3)),
    # Greedy steps ignore the sampled rule.
    "medusa_traversal": ("medusa", dict(verify_rule="traversal")),
    "lookahead_traversal": ("lookahead", dict(verify_rule="traversal")),
    "prompt_lookup_block": ("prompt_lookup", dict(verify_rule="block")),
    # EAGLE heads with random weights: the trees are still drafted, grown and verified.
    "eagle_default": ("eagle", {}),
    "eagle_eagle3": ("eagle", dict(fusion="eagle3", layers=(0, 1, 2))),  # a 2-layer target: any three states
    "eagle_small_dynamic_depth": ("eagle", dict(eagle_topk=2, eagle_depth=4, eagle_nodes=5, eagle_min_mass=0.3)),
    "eagle_wide": ("eagle", dict(eagle_topk=6, eagle_depth=3, eagle_nodes=40, verify_rule="traversal")),
}


def method_kwargs(model, method, params):
    params = dict(params)
    if method == "medusa":
        params["medusa_heads"] = heads_for(model, params.pop("heads", 4))
    if method == "eagle":
        params["eagle_head"] = EagleHead.from_target(model, params.pop("fusion", "eagle1"), params.pop("layers", None),
                                                     seed=1, std=0.2)
    return params


@pytest.mark.parametrize("case", list(GREEDY_CASES))
def test_greedy_equals_ar(target, ar_tokens, case):
    method, params = GREEDY_CASES[case]
    out = generate(target, PROMPTS + REPETITIVE, method=method, max_new_tokens=24,
                   **method_kwargs(target, method, params))
    assert out.tokens == ar_tokens
    assert out.stats.target_passes <= 25


def test_fixed_shape_prompt_lookup_equals_ar(monkeypatch, target, ar_tokens):
    """The GPU form of prompt lookup (K nodes always, -1 past the match, kept
    on the device) gives the same tokens."""
    import sys

    module = sys.modules["specdec_kernels.runtime.generate"]
    original = module.PromptLookupDrafter
    monkeypatch.setattr(module, "PromptLookupDrafter", lambda *a, **k: original(*a, **k, fixed_shape=True))
    out = generate(target, PROMPTS + REPETITIVE, method="prompt_lookup", max_new_tokens=24)
    assert out.tokens == ar_tokens


def test_medusa_trees_are_accepted(target, ar_tokens):
    """Medusa heads that predict well (small vocabulary: the top-10 of head 0
    covers most tokens) get tree paths accepted; output still equals ar."""
    out = generate(target, PROMPTS + REPETITIVE, method="medusa", max_new_tokens=24,
                   medusa_heads=heads_for(target))
    assert out.tokens == ar_tokens and out.stats.tau > 1.1


def repeating_model():
    """A model whose greedy continuation settles into repetition: attention is
    (nearly) switched off, so the next token is (nearly) a function of the
    current one."""
    model = tiny(vocab=32, seed=3, std=0.3)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[1].self_attn.o_proj.weight.mul_(0.02)
    return model


@pytest.mark.parametrize("method,params,min_tau", [
    ("lookahead", {}, 2.0),
    ("lookahead", dict(lookahead_window=3, lookahead_ngram=3, lookahead_guesses=2), 1.8),
    ("prompt_lookup", {}, 1.5),
])
def test_repetition_is_drafted(method, params, min_tau):
    """Where the output repeats, lookahead and prompt lookup accept long runs
    (so the drafts are used), and the output is still exactly ar's."""
    model = repeating_model()
    ar = generate(model, REPETITIVE, max_new_tokens=40)
    out = generate(model, REPETITIVE, method=method, max_new_tokens=40, **params)
    assert out.tokens == ar.tokens
    assert out.stats.tau > min_tau, out.stats.tau
    assert out.stats.target_passes < ar.stats.target_passes


SAMPLED_CASES = {
    "medusa": ("medusa", dict(medusa_choices=SMALL_CHOICES, heads=3), [1, 2, 3]),
    "lookahead": ("lookahead", dict(lookahead_window=3, lookahead_ngram=3, lookahead_guesses=3), [1, 2, 1, 2, 1]),
    "prompt_lookup": ("prompt_lookup", dict(num_draft_tokens=3, max_ngram=2), [1, 2, 1, 2, 1]),
    # The lossless rules beyond token by token (verify_rule): a tree, a tree plus a window of inert rows, a
    # point-mass chain. Prompt [3, 5, 3, 5, 3] (not [1, 2, 1, 2, 1], whose first drafts are almost never
    # accepted): the first two tokens differ from the token rule's, same seed, in 7 (Medusa), 621 (lookahead)
    # and 324 (prompt lookup) of the 1500 sequences, so the checks see the rule at work.
    "medusa_traversal": ("medusa", dict(medusa_choices=SMALL_CHOICES, heads=3, verify_rule="traversal"),
                         [3, 5, 3, 5, 3]),
    "lookahead_traversal": ("lookahead", dict(lookahead_window=3, lookahead_ngram=3, lookahead_guesses=3,
                                              verify_rule="traversal"), [3, 5, 3, 5, 3]),
    "prompt_lookup_block": ("prompt_lookup", dict(num_draft_tokens=3, max_ngram=2, verify_rule="block"),
                            [3, 5, 3, 5, 3]),
    # EAGLE: top-k trees (point-mass proposals), with the traversal rule, and sampled trees verified with q.
    "eagle": ("eagle", dict(eagle_topk=3, eagle_depth=3, eagle_nodes=6), [1, 2, 3]),
    "eagle_traversal": ("eagle", dict(eagle_topk=3, eagle_depth=3, eagle_nodes=6, verify_rule="traversal"),
                        [3, 5, 3, 5, 3]),
    "eagle_sampled": ("eagle", dict(eagle_topk=3, eagle_depth=3, eagle_nodes=6, eagle_sample=True), [1, 2, 3]),
    "eagle_sampled_traversal": ("eagle", dict(eagle_topk=3, eagle_depth=3, eagle_nodes=6, eagle_sample=True,
                                              verify_rule="traversal"), [3, 5, 3, 5, 3]),
    # Control: sampled EAGLE drafts ranked by their own scores keep a value-dependent subset of each
    # node's i.i.d. children: lossy (EagleDrafter._rank), and the test must catch it.
    # (Under the traversal rule, which leans on q the most; the token rule's output drifts less here.)
    "eagle_sampled_own_rank_control": ("eagle", dict(eagle_topk=3, eagle_depth=3, eagle_nodes=6, eagle_sample=True,
                                                     verify_rule="traversal", own_rank=True), [3, 5, 3, 5, 3]),
    # Control: Medusa's typical acceptance is lossy; the same test must catch it.
    "medusa_typical_control": ("medusa", dict(medusa_choices=SMALL_CHOICES, heads=3, acceptance="typical"),
                               [1, 2, 3]),
}


@pytest.mark.parametrize("case", list(SAMPLED_CASES))
def test_sampled_is_distributed_as_the_target(case, monkeypatch):
    """First token and first two tokens of 1500 copies of one prompt against
    the exact distribution from the target's logits (chi-square, alpha 1e-3
    each, fixed seed); tau > 1 shows the drafts were accepted sometimes. The
    lossy control must fail it (it does, p < 1e-8)."""
    method, params, prompt = SAMPLED_CASES[case]
    params = dict(params)
    if params.pop("own_rank", False):
        monkeypatch.setattr(EagleDrafter, "_rank", lambda self, parent_score, own_score: own_score)
    vocab, temperature = 6, 1.0
    model = tiny(vocab=vocab, seed=5, std=0.4)
    out = generate(model, [prompt] * 1500, method=method, max_new_tokens=3, temperature=temperature, seed=13,
                   **method_kwargs(model, method, params))
    first = torch.tensor([t[0] for t in out.tokens])
    pair = torch.tensor([t[0] * vocab + t[1] for t in out.tokens])
    p0, joint = exact_two_token_distribution(model, prompt, vocab, temperature)
    p_first = chi_square_pvalue(torch.bincount(first, minlength=vocab), p0)
    p_pair = chi_square_pvalue(torch.bincount(pair, minlength=vocab * vocab), joint)
    if case.endswith("_control"):
        assert min(p_first, p_pair) < ALPHA, (p_first, p_pair)
    else:
        assert p_first > ALPHA and p_pair > ALPHA, (p_first, p_pair)
    assert out.stats.tau > 1.05, out.stats.tau


def test_medusa_typical_acceptance_runs(target):
    """Medusa's typical acceptance (lossy, so no distribution test): valid
    tokens, trees accepted, every cache block freed (generate checks)."""
    out = generate(target, PROMPTS, method="medusa", medusa_heads=heads_for(target), acceptance="typical",
                   temperature=0.7, max_new_tokens=16, seed=1)
    assert all(len(t) == 16 and all(0 <= x < 32 for x in t) for t in out.tokens)
    greedy = generate(target, PROMPTS, method="medusa", medusa_heads=heads_for(target), acceptance="typical",
                      max_new_tokens=16)
    assert greedy.tokens == generate(target, PROMPTS, max_new_tokens=16).tokens  # temperature 0 is greedy


def test_medusa_drafter_fills_the_tree_from_head_topk(target):
    heads = heads_for(target)
    drafter = MedusaDrafter(heads)
    tree = drafter.tree
    hidden = torch.randn(2, target.config.hidden_size)
    drafter.hidden = {0: hidden[0], 1: hidden[1]}
    drafts, passes = drafter.propose([0, 1, 2], None, [0, 0, 0])
    assert passes == 1 and drafts[2].tokens == []  # no hidden state yet: the root alone
    top = torch.topk(heads(hidden), 10, dim=-1).indices
    for b in range(2):
        assert drafts[b].layout()[0] == list(tree.parents)
        assert drafts[b].tokens.tolist() == [int(top[b, tree.head[i], tree.rank[i]]) for i in range(1, tree.size)]


def test_medusa_heads_file_round_trip(tmp_path):
    heads = MedusaHeads.random(64, 20, num_heads=3, num_layers=2, seed=4)
    path = tmp_path / "medusa_heads.safetensors"
    heads.save(path)
    assert set(heads.state_dict_flat()) >= {"0.0.linear.weight", "0.0.linear.bias", "2.1.linear.bias", "2.2.weight"}
    loaded = MedusaHeads.from_file(path)
    assert (loaded.num_heads, loaded.num_layers, loaded.hidden, loaded.vocab) == (3, 2, 64, 20)
    x = torch.randn(5, 64)
    torch.testing.assert_close(loaded(x), heads(x), rtol=0, atol=0)
    from safetensors.torch import save_file

    state = heads.state_dict_flat()
    state.pop("1.0.linear.bias")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        MedusaHeads.from_file(tmp_path / "bad.safetensors")


def test_ngram_pool_against_a_python_model():
    """Random inserts: lookup returns the newest distinct n-grams with that
    first token, at most `ways` per hash bucket (ring), as a plain model says."""
    gen = torch.Generator().manual_seed(0)
    ngram, ways, slots = 3, 4, 8
    pool = NgramPool(2, ngram, ways, slots)
    model = [dict() for _ in range(2)]  # row -> bucket -> list of grams, oldest first
    for _ in range(30):
        grams = torch.randint(0, 12, (2, 5, ngram), generator=gen)
        grams[0, 1] = grams[0, 0]  # a duplicate inside one call
        grams[1, 2, 1] = -1  # an invalid gram
        pool.insert(torch.tensor([0, 1]), grams)
        for r in range(2):
            for g in grams[r].tolist():
                if min(g) < 0:
                    continue
                bucket = model[r].setdefault(g[0] % slots, [])
                if g in bucket:
                    continue
                bucket.append(g)
                if len(bucket) > ways:
                    bucket.pop(0)
        for first in range(12):
            tails, found = pool.lookup(torch.tensor([0, 1]), torch.tensor([first, first]), 6)
            for r in range(2):
                want = [g[1:] for g in reversed(model[r].get(first % slots, [])) if g[0] == first]
                got = [t for t, f in zip(tails[r].tolist(), found[r].tolist()) if f]
                assert got == want[:6], (r, first)


def python_lookup(history, max_ngram, k):
    for n in range(max_ngram, 0, -1):
        if len(history) <= n:
            continue
        tail = history[-n:]
        for start in range(len(history) - n - 1, -1, -1):
            if history[start:start + n] == tail:
                return history[start + n:start + n + k]
    return []


def test_prompt_lookup_against_a_python_model():
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        lengths = torch.randint(1, 30, (6,), generator=gen)
        tokens = torch.randint(0, 4, (6, 40), generator=gen)
        found = lookup(tokens, lengths, 3, 5).tolist()
        for b in range(6):
            history = tokens[b, :int(lengths[b])].tolist()
            want = python_lookup(history, 3, 5)
            assert [t for t in found[b] if t >= 0] == want, (history, found[b])


def test_bad_parameters(target):
    prompts = [[1, 2, 3]]
    heads = heads_for(target)
    cases = [
        (dict(method="lookahead", lookahead_window=0), "window W = 0 must be >= 1"),
        (dict(method="lookahead", lookahead_ngram=1), "ngram N = 1 must be >= 2"),
        (dict(method="lookahead", lookahead_guesses=-1), "guesses G = -1"),
        (dict(method="lookahead", lookahead_window=40, lookahead_ngram=8), "too many tokens"),
        (dict(method="medusa", medusa_heads=heads, medusa_choices=[(0,), (0, 0, 0)]), "skips a level"),
        (dict(method="medusa"), "needs medusa_heads"),
        (dict(method="medusa", medusa_heads=MedusaHeads.random(64, 32)), "hidden size 64"),
        (dict(method="medusa", medusa_heads=heads_for(target, num_heads=2), medusa_choices=MC_SIM_7B_63),
         "need 4 heads"),
        (dict(method="prompt_lookup", max_ngram=0), "max_ngram >= 1"),
        (dict(method="prompt_lookup", num_draft_tokens=0), "num_draft_tokens"),
        (dict(method="lookahead", acceptance="typical", temperature=1.0), "method='medusa' only"),
        (dict(method="medusa", medusa_heads=heads, acceptance="greedy"), "acceptance must be"),
        (dict(method="medusa", medusa_heads=heads, verify_rule="block"), "verify_rule='block' verifies chains, "
         "but method='medusa' drafts trees; use verify_rule='traversal'"),
        (dict(method="lookahead", verify_rule="block", temperature=1.0), "method='lookahead' drafts trees"),
        (dict(method="medusa", medusa_heads=heads, acceptance="typical", temperature=1.0, verify_rule="traversal"),
         "acceptance='typical' has a rule of its own"),
        (dict(method="prompt_lookup", verify_rule="Token"), "verify_rule must be one of"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            generate(target, prompts, max_new_tokens=4, **kwargs)


def test_choices_tree_shape():
    """The default Medusa tree as Medusa builds it (checked against Medusa's
    own construction in test_trees.py): 64 nodes with the root, 42 leaves."""
    tree = Tree.from_choices(MC_SIM_7B_63)
    assert tree.size == 64 and len(tree.leaves()) == 42 and max(tree.head) == 3
