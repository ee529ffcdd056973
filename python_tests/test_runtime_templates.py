"""The verify step's template fast path (drafts sharing a DraftTemplate, or
plain chains of one length) builds exactly the general path's inputs, draw
for draw, with and without bucketing, q and device tokens; and it does
O(batch) host work: no Python loop over rows."""
import pytest
import torch

from specdec_kernels.runtime import step as step_mod
from specdec_kernels.runtime.model import PagedKVCache
from specdec_kernels.runtime.step import Draft, VerifyStep
from specdec_kernels.runtime.templates import DraftTemplate
from specdec_kernels.trees import MC_SIM_7B_63, Tree
from test_runtime_generate import tiny

VOCAB = 16


def make_step(mode, bucketed):
    model = tiny(vocab=VOCAB, seed=4, std=0.3)
    cache = PagedKVCache(model.config, 1024, 16)
    return VerifyStep(model, cache, mode=mode, max_blocks=64, bucketed=bucketed,
                      generator=torch.Generator().manual_seed(3),
                      sampling=dict(temperature=0.8) if mode != "greedy" else None)


def inputs(step, drafts, general, rows=None, batch=None):
    """The step's inputs for 3..len(drafts) sequences, through one path."""
    alloc = step.cache.allocator
    seqs = list(range(len(drafts)))
    for s in seqs:
        alloc.add(s, 3 + s)
        alloc.reserve(s, 3 + s + (rows or 1 + len(drafts[s].tokens)))
    roots = [(7 * s) % VOCAB for s in seqs]
    prefix = [alloc.length(s) for s in seqs]
    if general:
        drafts = [Draft(tokens=d.tokens, parents=d.structure().parents[1:], positions=d.structure().positions[1:],
                        visible=d.structure().visible[1:], q=d.q) for d in drafts]
        original = step._shared_template
        step._shared_template = lambda ds: None
        try:
            return step._host_inputs(seqs, roots, prefix, drafts, rows, batch)
        finally:
            step._shared_template = original
    assert step._shared_template(drafts) is not None
    return step._host_inputs(seqs, roots, prefix, drafts, rows, batch)


def flat(host):
    """The template path's per-sequence rows expanded as the step expands
    them (``_Buffers.expand``), so both paths compare row for row."""
    if "tree_tokens" not in host:
        return host
    buf = step_mod._Buffers.wrap(host, VOCAB, "cpu")
    host = {k: v for k, v in host.items() if k not in ("tree_tokens", "verified", "offsets")}
    host["tokens"], host["draft_tokens"], host["positions"] = buf.expand(VOCAB)
    return host


def assert_same_inputs(a, b):
    (ha, wa, da), (hb, wb, db) = a, b
    ha, hb = flat(ha), flat(hb)
    assert (wa, da) == (wb, db)
    assert set(ha) - {"device_draft"} == set(hb) - {"device_draft"}
    for name in ha:
        if name == "device_draft":
            continue
        x, y = ha[name].cpu(), hb[name].cpu()
        if "device_draft" in hb and name in ("tokens", "draft_tokens"):  # the general path patches these later
            rows, drafted = hb["device_draft"]
            y = y.clone()
            y[rows] = drafted.cpu().clamp(0, VOCAB - 1) if name == "tokens" else drafted.cpu()
        if name == "draft_tokens":  # an inert row's token is never read: the general path leaves a device one
            starts = torch.zeros_like(x, dtype=torch.bool)
            starts[ha["qo_indptr"][:-1].long()] = True
            inert = (ha["parents"].cpu() == -1) & ~starts
            x, y = torch.where(inert, -1, x), torch.where(inert, -1, y)
        assert x.dtype == y.dtype and torch.equal(x, y), name


def lookahead_template():
    # A window of inert rows with their own visibility, then guesses hanging off the root.
    parents = [-1, -1, -1, 0, 4, 0]
    visible = [0b11, 0b101, 0b1001, 0b10001, 0b110001, 0b1000001]
    positions = [1, 1, 2, 1, 2, 1]
    return DraftTemplate(parents, positions, visible)


def drafts_for(kind, batch, gen, with_q=False, on_device=False):
    if kind == "chain":
        tmpl, size = None, 4
    elif kind == "medusa":
        tmpl = DraftTemplate(Tree.from_choices(MC_SIM_7B_63).parents[1:])
        size = tmpl.size - 1
    else:
        tmpl = lookahead_template()
        size = tmpl.size - 1
    out = []
    for _ in range(batch):
        toks = torch.randint(VOCAB, (size,), generator=gen)
        q = torch.softmax(torch.randn(size + 1, VOCAB, generator=gen), -1) if with_q else None
        out.append(Draft(tokens=toks if on_device else toks.tolist(), template=tmpl, q=q))
    return out


@pytest.mark.parametrize("mode", ["greedy", "rejection", "typical"])
@pytest.mark.parametrize("kind", ["chain", "medusa", "lookahead"])
@pytest.mark.parametrize("bucketed", [False, True])
def test_template_path_equals_general_path(mode, kind, bucketed):
    gen = torch.Generator().manual_seed(0)
    for batch, on_device in ((3, False), (5, True)):
        drafts = drafts_for(kind, batch, gen, with_q=mode == "rejection" and kind == "chain", on_device=on_device)
        size = 1 + len(drafts[0].tokens)
        rows, b = ((1 << (size - 1).bit_length()), 1 << (batch - 1).bit_length()) if bucketed else (None, None)
        fast = inputs(make_step(mode, bucketed), drafts, general=False, rows=rows, batch=b)
        slow = inputs(make_step(mode, bucketed), drafts, general=True, rows=rows, batch=b)
        assert_same_inputs(fast, slow)


def test_template_path_has_no_row_loop(monkeypatch):
    """Host work is O(batch): building the 64-node Medusa tree's inputs for
    64 sequences never packs a mask row nor lays out a draft in Python."""
    gen = torch.Generator().manual_seed(1)
    drafts = drafts_for("medusa", 64, gen, on_device=True)
    s = make_step("rejection", False)
    inputs(s, drafts[:2], general=False)  # the template's device layout is built once, here
    calls = []
    monkeypatch.setattr(step_mod, "_pack_rows", lambda *a: calls.append("pack") or None)
    monkeypatch.setattr(DraftTemplate, "layout", lambda self: calls.append("layout") or None)
    again = make_step("rejection", False)
    again._chains = s._chains
    inputs(again, drafts, general=False)
    assert calls == []


def test_template_mismatch_raises():
    tmpl = DraftTemplate.chain(3)
    with pytest.raises(ValueError, match="2 nodes|3 nodes"):
        Draft(tokens=[1, 2], template=tmpl).structure()
    with pytest.raises(ValueError, match="not both"):
        Draft(tokens=[1, 2, 3], parents=[0, 1, 2], template=tmpl).structure()
    s = make_step("greedy", False)
    bad = [Draft(tokens=[1, 2, 99], template=tmpl), Draft(tokens=[1, 2, 3], template=tmpl)]
    with pytest.raises(ValueError, match=r"drafts\[0\] proposes token 99"):
        inputs(s, bad, general=False)


def test_device_philox_matches_the_reference_stream():
    from specdec_kernels.reference.sampling import philox_uniforms, philox_uniforms_at
    for seed, offset in ((0, 0), (2**40 + 7, 2**33 - 5), (123456789, 2**62 + 3)):
        assert torch.equal(philox_uniforms_at(seed, offset + torch.arange(300)), philox_uniforms(seed, offset, 300))


def test_step_draws_are_keyed_by_sequence_and_node():
    """Padding never moves a real row's draw, and each step draws afresh."""
    s = make_step("rejection", False)
    step0, step1 = torch.tensor([0]), torch.tensor([1])
    ragged = s._uniforms(s._draw_key([3, 5, 2]), step0)
    padded = s._uniforms(s._draw_key([8, 8, 8, 8]), step0).reshape(4, 8)
    assert torch.equal(ragged, torch.cat([padded[0, :3], padded[1, :5], padded[2, :2]]))
    assert not torch.equal(s._uniforms(s._draw_key([3, 5, 2]), step1), ragged)


@pytest.mark.parametrize("schedule, temperature", [("constant", 0.0), ("heuristic", 0.9), ("dynamic", 0.0)])
def test_draft_model_steps_take_the_device_path(monkeypatch, schedule, temperature):
    """The draft model hands over fixed-shape device drafts (K = the largest
    budget, -1 past a sequence's own), so every step of a ragged batch,
    heuristic budgets and dynamic stops included, goes through the template
    path; output still equals AR's when greedy."""
    from specdec_kernels.runtime import generate
    from specdec_kernels.runtime.drafters import DraftModelDrafter

    monkeypatch.setattr(DraftModelDrafter, "fixed_shape", True)  # the GPU default
    target = tiny(vocab=VOCAB, seed=4, std=0.3)
    draft = tiny(vocab=VOCAB, hidden=64, layers=1, seed=5, std=0.3)
    monkeypatch.setattr(step_mod, "_pack_rows", lambda *a: pytest.fail("a step took the general path"))
    original = step_mod.VerifyStep._template_inputs
    seen = []

    def spy(self, tmpl, seqs, roots, prefix_lens, drafts, *rest):
        seen.append(all(isinstance(d.tokens, torch.Tensor) for d in drafts))
        return original(self, tmpl, seqs, roots, prefix_lens, drafts, *rest)

    monkeypatch.setattr(step_mod.VerifyStep, "_template_inputs", spy)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [3]]
    out = generate(target, prompts, method="draft", draft_model=draft, num_draft_tokens=3, schedule=schedule,
                   confidence_threshold=0.5, temperature=temperature, max_new_tokens=12, seed=2)
    assert seen and all(seen)
    if temperature == 0:
        assert out.tokens == generate(target, prompts, max_new_tokens=12).tokens


@pytest.mark.parametrize("fixed_shape", [True, False])
def test_draft_model_with_ragged_budgets_drafts_its_own_greedy_continuation(fixed_shape):
    """A drafter that is the target itself, greedy, with budgets 1, 3, 2 and
    4 in one batch, drafts exactly each sequence's AR continuation up to its
    budget (then -1 with fixed shapes, else nothing): the sequences fed at
    each pass are the right ones."""
    from specdec_kernels.runtime.drafters import DraftModelDrafter
    from specdec_kernels.runtime.generate import CachedModel, generate

    model = tiny(vocab=VOCAB, seed=4, std=0.3)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [3], [9, 9, 1, 2]]
    ks = [1, 3, 2, 4]
    ar = generate(model, prompts, max_new_tokens=max(ks)).tokens
    drafter = DraftModelDrafter(CachedModel(model, 64, 16), dict(temperature=0.0), torch.Generator())
    drafter.fixed_shape = fixed_shape
    history = dict(enumerate(prompts))
    drafter.start(list(history), history)
    drafts, passes = drafter.propose(list(history), history, ks)
    assert passes == max(ks)
    for d, k, want in zip(drafts, ks, ar):
        assert d.tokens.tolist() == want[:k] + [-1] * ((max(ks) - k) if fixed_shape else 0)
