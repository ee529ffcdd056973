"""The runtime's Llama-family model against Hugging Face transformers on
checkpoints transformers saves itself: logits of a prefill (SDPA), of a
verify-style chain and of single-token decode steps over the paged cache
(append_kv + tree_attention) must match in fp32."""
import pytest
import torch

from specdec_kernels.runtime import LlamaModel, ModelConfig, PagedKVCache, UnsupportedConfigError

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=97, hidden_size=128, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=64, max_position_embeddings=256)
VARIANTS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(TINY, rope_theta=10000.0)),
    "llama3_rope_tied": ("LlamaConfig", "LlamaForCausalLM",
                         dict(TINY, tie_word_embeddings=True, rope_theta=500000.0,
                              rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                high_freq_factor=4.0, original_max_position_embeddings=32))),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(TINY, rope_theta=1000000.0)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(TINY, sliding_window=None)),
}


def save_checkpoint(variant, folder):
    config_cls, model_cls, kwargs = VARIANTS[variant]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**kwargs)
    hf = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a dropped term shows
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(folder, safe_serialization=True)
    return hf


def cache_for(model, lengths, block_size=4):
    cache = PagedKVCache(model.config, num_blocks=64, block_size=block_size)
    for b, n in enumerate(lengths):
        cache.allocator.add(b, n)
    table = cache.allocator.block_table(list(range(len(lengths))))
    return cache, table


def ragged(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_transformers(tmp_path, variant):
    hf = save_checkpoint(variant, tmp_path)
    ours = LlamaModel.from_pretrained(tmp_path)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=gen) for n in (21, 13)]
    with torch.no_grad():
        expected = [hf(p[None]).logits[0] for p in prompts]
    lengths = [len(p) for p in prompts]

    # Whole prompts through the SDPA prefill.
    cache, table = cache_for(ours, lengths)
    zeros = torch.zeros(2, dtype=torch.int32)
    logits, _ = ours(torch.cat(prompts), torch.cat([torch.arange(n) for n in lengths]), cache, table, zeros,
                     ragged(lengths), prefill=True)
    torch.testing.assert_close(logits, torch.cat(expected), rtol=1e-4, atol=1e-4)

    # Prefill all but the last 5 tokens, then a 3-token chain (tree_attention), then two decode steps.
    cache, table = cache_for(ours, lengths)
    head = [n - 5 for n in lengths]
    ours(torch.cat([p[:h] for p, h in zip(prompts, head)]), torch.cat([torch.arange(h) for h in head]), cache,
         table, zeros, ragged(head), prefill=True)
    done = head
    for step in (3, 1, 1):
        tokens = torch.cat([p[d:d + step] for p, d in zip(prompts, done)])
        positions = torch.cat([torch.arange(d, d + step) for d in done])
        logits, _ = ours(tokens, positions, cache, table, torch.tensor(done, dtype=torch.int32),
                         ragged([step, step]))
        want = torch.cat([e[d:d + step] for e, d in zip(expected, done)])
        torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
        done = [d + step for d in done]


def test_unsupported_configs_name_the_field():
    base = dict(model_type="llama", vocab_size=10, hidden_size=128, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2)
    cases = [(dict(model_type="gpt2"), "model_type 'gpt2'"), (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
             (dict(rope_scaling=dict(rope_type="yarn", factor=2.0)), "rope scaling type 'yarn'"),
             (dict(num_attention_heads=4), "head_dim 32"), (dict(mlp_bias=True), "mlp_bias"),
             (dict(model_type="mistral", sliding_window=4096), "sliding_window=4096"),
             (dict(num_key_value_heads=3), "multiple of num_key_value_heads")]
    for override, message in cases:
        with pytest.raises(UnsupportedConfigError, match=message.replace("(", r"\(")):
            ModelConfig.from_hf(dict(base, **override))


def test_random_model_runs_decode_steps():
    cfg = ModelConfig(vocab_size=50, hidden_size=128, intermediate_size=96, num_layers=2, num_heads=2,
                      num_kv_heads=1, head_dim=64)
    model = LlamaModel.random(cfg, seed=3)
    cache, table = cache_for(model, [6])
    full, _ = model(torch.arange(6), torch.arange(6), cache, table, torch.zeros(1, dtype=torch.int32),
                    ragged([6]), prefill=True)
    cache2, table2 = cache_for(model, [6])
    model(torch.arange(5), torch.arange(5), cache2, table2, torch.zeros(1, dtype=torch.int32), ragged([5]),
          prefill=True)
    last, _ = model(torch.tensor([5]), torch.tensor([5]), cache2, table2, torch.tensor([5], dtype=torch.int32),
                    ragged([1]))
    torch.testing.assert_close(last[0], full[5], rtol=1e-5, atol=1e-5)


def _unfused_logits(model, tokens):
    """A reference without the fused weights: each layer through its separate
    q/k/v and gate/up nn.Linear modules, causal SDPA over the prompt."""
    cfg = model.config
    positions = torch.arange(len(tokens))
    x = model.model.embed_tokens(tokens)
    angles = positions.float()[:, None] * model.inv_freq[None]
    emb = torch.cat((angles, angles), -1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    from specdec_kernels.runtime.model import rotate
    n = len(tokens)
    for layer in model.model.layers:
        a = layer.self_attn
        h = layer.input_layernorm(x)
        q = rotate(a.q_proj(h).view(n, cfg.num_heads, cfg.head_dim), cos, sin).transpose(0, 1)
        k = rotate(a.k_proj(h).view(n, cfg.num_kv_heads, cfg.head_dim), cos, sin).transpose(0, 1)
        v = a.v_proj(h).view(n, cfg.num_kv_heads, cfg.head_dim).transpose(0, 1)
        g = cfg.num_heads // cfg.num_kv_heads
        o = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(g, 0), v.repeat_interleave(g, 0),
                                                             is_causal=True)
        x = x + a.o_proj(o.transpose(0, 1).reshape(n, -1))
        m = layer.mlp
        hh = layer.post_attention_layernorm(x)
        x = x + m.down_proj(torch.nn.functional.silu(m.gate_proj(hh)) * m.up_proj(hh))
    return model.lm_head(model.model.norm(x))


def _ours(model, tokens):
    cache, table = cache_for(model, [len(tokens)])
    zeros = torch.zeros(1, dtype=torch.int32)
    return model(tokens, torch.arange(len(tokens)), cache, table, zeros, ragged([len(tokens)]))[0]


def test_fused_projections_follow_every_weight_change():
    """Q/K/V and gate/up run as one matmul each over weights the linears
    alias; after in-place updates, a dtype change and a replaced parameter
    the forward still uses the current weights, never a stale fused copy."""
    cfg = ModelConfig(vocab_size=97, hidden_size=128, intermediate_size=192, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=64, qkv_bias=True)
    model = LlamaModel.random(cfg, seed=3)
    tokens = torch.randint(0, 97, (9,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(_ours(model, tokens), _unfused_logits(model, tokens), rtol=1e-4, atol=1e-4)
        layer = model.model.layers[1]
        assert layer.self_attn.k_proj.weight.data_ptr() == layer.self_attn.qkv.weight[256:].data_ptr()  # aliased
        state = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
        model.load_state_dict(state)  # in place
        torch.testing.assert_close(_ours(model, tokens), _unfused_logits(model, tokens), rtol=1e-4, atol=1e-4)
        model = model.to(torch.bfloat16).to(torch.float32)  # new storage for every parameter, new values
        torch.testing.assert_close(_ours(model, tokens), _unfused_logits(model, tokens), rtol=1e-4, atol=1e-4)
        layer = model.model.layers[0]
        layer.mlp.up_proj.weight = torch.nn.Parameter(torch.randn_like(layer.mlp.up_proj.weight))  # replaced
        layer.self_attn.v_proj.bias = torch.nn.Parameter(torch.randn_like(layer.self_attn.v_proj.bias))
        torch.testing.assert_close(_ours(model, tokens), _unfused_logits(model, tokens), rtol=1e-4, atol=1e-4)
