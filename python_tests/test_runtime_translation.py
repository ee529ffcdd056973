"""Drafting across vocabularies (runtime.translation): greedy output equals
AR's in both directions (byte-level target with a BPE draft, BPE target with
a byte-level draft), prompts with multi-byte UTF-8 and tokens straddling
character boundaries; sampled output is distributed as the target's
(chi-square with a broken-proposal control); the draft's view stays the
exact encoding of the target's text; bad tokenizer pairs fail clearly."""
import pytest
import torch

tokenizers = pytest.importorskip("tokenizers")

from specdec_kernels.runtime import generate  # noqa: E402
from specdec_kernels.runtime.tokenization import (ByteLevelBPE, ByteTokenizer, TokenizerMismatchError,  # noqa: E402
                                                  as_tokenizer)
from specdec_kernels.runtime.translation import TranslatingDrafter, _View  # noqa: E402
from test_runtime_generate import ALPHA, chi_square_pvalue, exact_two_token_distribution, tiny  # noqa: E402

TEXT = ("héllo wörld, naïve café ✓ 日本語のテキスト — ünïcödé\n"
        "def add(a, b):\n    return a + b  # sum ✓\n") * 40
PROMPTS = ["naïve ca", "日本語の", "def add(a, b):\n    ret", "✓ ü", "x"]


@pytest.fixture(scope="module")
def bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([TEXT], trainer)
    return tok


def test_adapters_are_byte_exact(bpe):
    a = as_tokenizer(bpe)
    for text in PROMPTS + [TEXT[:200]]:
        data = text.encode()
        ids = a.encode(data)
        assert a.token_bytes(ids) == data
    # Single tokens may hold part of a character: their bytes still concatenate exactly.
    ids = a.encode("日本語のテキスト".encode())
    assert b"".join(a.token_bytes([i]) for i in ids) == "日本語のテキスト".encode()
    assert as_tokenizer("bytes").encode(b"\xff\x00") == [255, 0]
    # Token healing: the last word waits (a later byte could re-tokenize it); one word alone does not.
    assert a.word_start(b"def retu") == 3 and a.word_start("x = wö".encode()) == 3
    assert a.word_start(b"retu") == 4 and ByteTokenizer().word_start(b"def retu") == 8
    with pytest.raises(TypeError, match="cannot use int"):
        as_tokenizer(3)


def test_a_transformers_tokenizer_works_as_its_backend(bpe):
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe)
    a, b = as_tokenizer(fast), as_tokenizer(bpe)
    for text in PROMPTS:
        assert a.encode(text.encode()) == b.encode(text.encode())
    target, draft, target_tok, _ = pair("byte_target", bpe)
    prompts = encode_prompts(target_tok, PROMPTS[:2])
    out = generate(target, prompts, method="draft", draft_model=draft, draft_tokenizer=fast, target_tokenizer="bytes",
                   max_new_tokens=12)
    assert out.tokens == generate(target, prompts, max_new_tokens=12).tokens


def test_view_keeps_the_exact_encoding_of_the_text(bpe):
    """Bytes arrive one by one (characters split across steps, an invalid
    byte in the middle): after each, the view is the text so far with the
    incomplete character held back and the invalid byte replaced, and the
    draft's tokens (re-encoded over the look-behind window only) spell all of
    it but its last word, which a proposal must start with."""
    drafter = TranslatingDrafter(_Core(), as_tokenizer(bpe), ByteTokenizer(), lookbehind=3)
    drafter.views[0] = _View(raw_bytes=False)
    stream = "naïve café ✓ 日本".encode() + b"\xff" + " ok".encode()
    for i in range(len(stream)):
        drafter._sync(0, list(stream[i:i + 1]))
        view, done = drafter.views[0], stream[:i + 1]
        waiting = len(view.decoder.getstate()[0])
        assert bytes(view.data) == done[:len(done) - waiting].decode("utf-8", errors="replace").encode()
        assert view.cut == drafter.draft.word_start(bytes(view.data))
        assert drafter.draft.token_bytes(view.ids) == bytes(view.data[:view.cut])
        assert view.pending() == bytes(view.data[view.cut:]) + done[len(done) - waiting:]
        assert view.ends == [len(drafter.draft.token_bytes(view.ids[:j + 1])) for j in range(len(view.ids))]
    assert bytes(drafter.views[0].data) == "naïve café ✓ 日本\ufffd ok".encode()
    assert drafter.views[0].pending() == b" ok"  # the last word waits


class _Core:
    fixed_shape = None
    model = None


def pair(direction, bpe, seed=0):
    vocab = bpe.get_vocab_size()
    if direction == "byte_target":
        target, draft = tiny(vocab=256, seed=seed, std=0.3), tiny(vocab=vocab, hidden=64, layers=1, seed=seed + 1)
        return target, draft, "bytes", bpe
    target, draft = tiny(vocab=vocab, seed=seed, std=0.3), tiny(vocab=256, hidden=64, layers=1, seed=seed + 1)
    return target, draft, bpe, "bytes"


def encode_prompts(tok, prompts):
    return [as_tokenizer(tok).encode(p.encode()) for p in prompts]


@pytest.mark.parametrize("direction", ["byte_target", "bpe_target"])
@pytest.mark.parametrize("schedule, intersection", [("constant", False), ("dynamic", False), ("constant", True)])
def test_greedy_equals_ar(bpe, direction, schedule, intersection):
    target, draft, target_tok, draft_tok = pair(direction, bpe)
    prompts = encode_prompts(target_tok, PROMPTS)
    want = generate(target, prompts, max_new_tokens=24).tokens
    out = generate(target, prompts, method="draft", draft_model=draft, draft_tokenizer=draft_tok,
                   target_tokenizer=target_tok, num_draft_tokens=4, schedule=schedule, max_new_tokens=24,
                   token_intersection=intersection)
    assert out.tokens == want


def test_a_draft_that_is_the_target_is_accepted_through_the_translation():
    """The target drafting for itself, both sides through the byte identity:
    every proposal survives the round trip, so nearly every step accepts all
    K tokens (the views, the look-behind and the cache rollback line up)."""
    target = tiny(vocab=256, seed=3, std=0.3)
    prompts = [list("naïve ✓ 日本".encode()), list(b"abc")]
    want = generate(target, prompts, max_new_tokens=40).tokens
    out = generate(target, prompts, method="draft", draft_model=target, draft_tokenizer="bytes",
                   target_tokenizer="bytes", num_draft_tokens=4, max_new_tokens=40)
    assert out.tokens == want
    assert out.stats.tau > 4.5, out.stats.tau


@pytest.mark.parametrize("broken, intersection, rule", [(False, False, "token"), (True, False, "token"),
                                                        (False, True, "token"), (True, True, "token"),
                                                        (False, True, "block"), (True, True, "block")])
def test_sampled_is_distributed_as_the_target(bpe, monkeypatch, broken, intersection, rule):
    """Chi-square (alpha 1e-3, fixed seed) of the first token and the first
    pair over 1500 copies of one prompt, byte-level target (temperature 1)
    with a BPE draft (point-mass proposals, or the draft's q over the shared
    tokens with token-level intersection), against the exact distribution
    from the target's logits; with the token rule and, for the sampled
    (intersection) chains, verify_rule="block". Control: claiming the
    translated proposal came from a q that gives its tokens no mass (so they
    are always accepted) must fail."""
    target = tiny(vocab=256, seed=5, std=1.5)
    draft = tiny(vocab=bpe.get_vocab_size(), hidden=64, layers=1, seed=6, std=1.5)
    if broken:
        from specdec_kernels.runtime import translation

        original = translation.TranslatingDrafter.propose

        def wrong(self, seqs, history, ks):
            drafts, passes = original(self, seqs, history, ks)
            for d in drafts:
                if d.tokens:  # a claimed q that never saw the drafted tokens: they are always accepted
                    d.q = torch.zeros(1 + len(d.tokens), 256)
                    d.q[:, 0] = 1.0
            return drafts, passes

        monkeypatch.setattr(translation.TranslatingDrafter, "propose", wrong)
    prompt = list("ab".encode())
    n = 1500
    out = generate(target, [prompt] * n, method="draft", draft_model=draft, draft_tokenizer=bpe,
                   target_tokenizer="bytes", num_draft_tokens=3, max_new_tokens=2, temperature=1.0, seed=11,
                   token_intersection=intersection, verify_rule=rule)
    first = torch.tensor([t[0] for t in out.tokens])
    pair_ = torch.tensor([t[0] * 256 + t[1] for t in out.tokens])
    p0, joint = exact_two_token_distribution(target, prompt, 256, 1.0)
    p_first = chi_square_pvalue(torch.bincount(first, minlength=256), p0)
    p_pair = chi_square_pvalue(torch.bincount(pair_, minlength=256 * 256), joint)
    if broken:
        assert min(p_first, p_pair) < ALPHA, (p_first, p_pair)
    else:
        assert p_first > ALPHA and p_pair > ALPHA, (p_first, p_pair)


def test_bad_tokenizer_pairs_fail_clearly(bpe):
    from tokenizers import Tokenizer, models, pre_tokenizers

    word = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    target, draft = tiny(vocab=256), tiny(vocab=320, hidden=64, layers=1)
    kwargs = dict(method="draft", draft_model=draft, max_new_tokens=4)
    with pytest.raises(TokenizerMismatchError, match="ByteLevel decoder"):
        generate(target, [[97]], draft_tokenizer=word, target_tokenizer="bytes", **kwargs)
    with pytest.raises(ValueError, match="pass both"):
        generate(target, [[97]], draft_tokenizer=bpe, **kwargs)
    with pytest.raises(ValueError, match="differs from the target's"):
        generate(target, [[97]], **kwargs)
    with pytest.raises(ValueError, match="heuristic"):
        generate(target, [[97]], draft_tokenizer=bpe, target_tokenizer="bytes", schedule="heuristic", **kwargs)
    small = tiny(vocab=100, hidden=64, layers=1)
    with pytest.raises(ValueError, match="draft_tokenizer has 320 tokens"):
        generate(target, [[97]], method="draft", draft_model=small, draft_tokenizer=bpe, target_tokenizer="bytes",
                 max_new_tokens=4)
    # A byte-level BPE that lacks bytes (no initial alphabet) cannot encode the target's text.
    from tokenizers import decoders, trainers
    thin = Tokenizer(models.BPE(unk_token="[UNK]"))
    thin.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    thin.decoder = decoders.ByteLevel()
    thin.train_from_iterator(["aaaa bbbb"], trainers.BpeTrainer(vocab_size=40, special_tokens=["[UNK]"],
                                                                 show_progress=False))
    with pytest.raises(TokenizerMismatchError, match="cannot encode the target's text"):
        generate(target, [list("zz ✓".encode())], method="draft", draft_model=draft, draft_tokenizer=thin,
                 target_tokenizer="bytes", max_new_tokens=4)


def test_the_draft_cache_is_cut_back_to_the_common_prefix():
    """After a step the draft's cache keeps exactly the longest common prefix
    of what it held (its view plus the drafts it was fed) and its new view."""
    from types import SimpleNamespace

    from specdec_kernels.runtime.drafters import DraftModelDrafter
    from specdec_kernels.runtime.generate import CachedModel

    model = tiny(vocab=256, seed=3, std=0.3)
    core = DraftModelDrafter(CachedModel(model, 64, 16), dict(temperature=0.0), torch.Generator())
    drafter = TranslatingDrafter(core, ByteTokenizer(), ByteTokenizer())
    history = {0: list(b"abcdef"), 1: list(b"xyz")}
    drafter.start([0, 1], history)
    drafts, _ = drafter.propose([0, 1], history, [4, 4])
    proposed = {s: drafter._proposed[s] for s in (0, 1)}
    assert [d.tokens for d in drafts] == [proposed[0], proposed[1]]  # bytes both sides: the same tokens
    # Sequence 0 accepts two drafts and a different third token; sequence 1 rejects at once.
    other = (proposed[0][2] + 1) % 256
    result = SimpleNamespace(tokens=[proposed[0][:2] + [other], [(proposed[1][0] + 1) % 256]])
    drafter.accepted([0, 1], [6, 3], result)
    assert core.model.length(0) == 6 + 2  # the view and the two accepted drafts; not the rejected third
    assert core.model.length(1) == 3  # the view "xyz": its drafts are all gone


def test_a_boundary_that_re_encodes_cuts_the_draft_cache_further_back():
    """With merges ranked b+c before a+b, "xab" is [x][ab] but "xabc" is
    [x][a][bc]: after the target emits "c" the draft's cache keeps only [x].
    (A pre-tokenizer that does not split words: nothing is held back.)"""
    from types import SimpleNamespace

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from specdec_kernels.runtime.drafters import DraftModelDrafter
    from specdec_kernels.runtime.generate import CachedModel

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update(ab=len(vocab), bc=len(vocab) + 1)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("b", "c"), ("a", "b")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    adapter = as_tokenizer(tok)
    assert adapter.encode(b"xab") == [vocab["x"], vocab["ab"]]
    assert adapter.encode(b"xabc") == [vocab["x"], vocab["a"], vocab["bc"]]
    model = tiny(vocab=len(vocab), hidden=64, layers=1, seed=3)
    core = DraftModelDrafter(CachedModel(model, 64, 16), dict(temperature=0.0), torch.Generator())
    drafter = TranslatingDrafter(core, adapter, ByteTokenizer())
    history = {0: list(b"xab")}
    drafter.start([0], history)
    drafter.propose([0], history, [3])
    drafter.accepted([0], [3], SimpleNamespace(tokens=[[ord("c")]]))
    assert drafter.views[0].ids == [vocab["x"], vocab["a"], vocab["bc"]]
    assert core.model.length(0) == 1


def test_token_prefixes_offer_only_tokens_that_agree_with_the_held_back_bytes():
    from specdec_kernels.runtime.drafters import TokenPrefixes, byte_table

    table = byte_table([b"a", b"ab", b"abc", b"b", b"", b"bc"], "cpu")
    prefixes = TokenPrefixes(table, [b"ab", b"", b"abcd"])
    logits = torch.zeros(3, 6)
    allowed = prefixes.mask(logits, None) > float("-inf")
    assert allowed.tolist() == [[True, True, True, False, False, False],  # "a", "ab", "abc" agree with "ab"
                                [True] * 6,  # no prefix: everything
                                [True, True, True, False, False, False]]
    prefixes.consume(torch.tensor([0, 3, 2]), None)  # spelt "a", "b", "abc"
    allowed = prefixes.mask(logits, None) > float("-inf")
    assert allowed[0].tolist() == [False, False, False, True, False, True]  # "b" left: "b", "bc"
    assert allowed[1].all() and allowed[2].tolist() == [False] * 6  # "d" left: no token spells it
    rows = torch.tensor([0])  # a sub-batch: row 0 alone
    assert (prefixes.mask(logits[:1], rows) > float("-inf")).tolist() == [allowed[0].tolist()]


def test_healed_proposals_spell_the_held_back_word_first(bpe):
    """Every proposal the draft makes starts with the bytes it was asked to
    spell (the last word and any incomplete character), or is a prefix of them."""
    from specdec_kernels.runtime import translation

    target, draft, target_tok, draft_tok = pair("byte_target", bpe, seed=4)
    seen = []
    original = translation.TranslatingDrafter.propose

    def spy(self, seqs, history, ks):
        asked = {s: self.views[s].pending() for s in seqs}
        drafts, passes = original(self, seqs, history, ks)
        for s in seqs:
            spelt = self.draft.token_bytes(self._proposed.get(s, []))
            seen.append(spelt.startswith(asked[s]) or asked[s].startswith(spelt))
        return drafts, passes

    translation.TranslatingDrafter.propose = spy
    try:
        generate(target, encode_prompts(target_tok, PROMPTS), method="draft", draft_model=draft,
                 draft_tokenizer=draft_tok, target_tokenizer=target_tok, num_draft_tokens=3, max_new_tokens=16)
    finally:
        translation.TranslatingDrafter.propose = original
    assert seen and all(seen)
