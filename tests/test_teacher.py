"""Bit tokens, splits, the mask schedule, classifier-free guidance and the multi-step sampler."""
import math

import pytest
import torch

from config import PRESETS, UserError, maskbit_scale_to_w
from masking import cfg, guidance_at, guided_logits, halton_counts, mask_ratio, random_mask
from bert import SelfAttention
from maskbit import LFQBert
from maskgit import MaskTransformer
from teacher import sample
from tokenizer import bits_to_index, combine_tokens, expected_bits, index_to_bits, split_tokens


@pytest.mark.parametrize("bits", [1, 10, 12, 18])
def test_bits_round_trip_whole_codebook(bits):
    ids = torch.arange(2 ** bits)
    b = index_to_bits(ids, bits)
    assert torch.equal(bits_to_index(b), ids)
    assert set(b.unique().tolist()) == {-1.0, 1.0}
    if bits >= 3:                                                      # 5 = 0b101: least significant bit first
        assert torch.equal(b[5, :3], torch.tensor([1.0, -1.0, 1.0])) and (b[5, 3:] == -1).all()


@pytest.mark.parametrize("bits,splits", [(10, 1), (10, 2), (12, 3), (14, 2), (18, 3)])
def test_split_combine(bits, splits):
    full = torch.randint(0, 2 ** bits, (3, 7))
    parts = split_tokens(full, 2 ** bits, splits)
    assert parts.shape == (3, 7, splits) and parts.max() < 2 ** (bits // splits)
    assert torch.equal(combine_tokens(parts, 2 ** bits, splits), full)
    if splits > 1:   # split 0 holds the lowest bits
        assert torch.equal(parts[..., 0], full % 2 ** (bits // splits))
    # per-split bits concatenated split-major are the full id's bits
    cat = torch.cat([index_to_bits(parts[..., s], bits // splits) for s in range(splits)], -1)
    assert torch.equal(cat, index_to_bits(full, bits))


def test_expected_bits_one_hot_and_uniform():
    ids = torch.randint(0, 16, (2, 5, 2))
    one_hot = torch.nn.functional.one_hot(ids, 16).float()
    assert torch.equal(expected_bits(one_hot), index_to_bits(ids, 4).flatten(-2))
    assert expected_bits(torch.full((1, 1, 2, 16), 1 / 16)).abs().max() < 1e-6


@pytest.mark.parametrize("schedule,r,expected", [("arccos", 0.0, 1.0), ("arccos", 1.0, 0.0), ("arccos", 0.5, 2 / 3),
                                                 ("cosine", 0.5, math.cos(math.pi / 4)), ("linear", 0.25, 0.75),
                                                 ("square", 0.5, 0.75), ("root", 0.25, 0.5)])
def test_mask_ratio(schedule, r, expected):
    assert mask_ratio(r, schedule).item() == pytest.approx(expected, abs=1e-6)


def test_random_mask_exact_counts():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 8, (500, 16, 2), generator=g)
    masked, mask = random_mask(tokens, 8, "arccos", generator=g)
    counts = mask.flatten(1).sum(1)
    assert counts.min() >= 1 and counts.max() <= 32
    assert torch.equal(masked[mask], torch.full_like(masked[mask], 8)) and torch.equal(masked[~mask], tokens[~mask])
    # the count is round(32 * acos(r) / (pi/2)) with r ~ U(0,1): its mean is 32 * E[acos(r)]/(pi/2) = 32 * 2/pi
    assert counts.float().mean().item() == pytest.approx(32 * 2 / math.pi, rel=0.06)
    # the count is exact per sample: regenerate r with the same stream and compare one by one
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    _, mask = random_mask(tokens, 8, "linear", generator=g1)
    r = torch.rand(500, generator=g2)
    assert torch.equal(mask.flatten(1).sum(1), (32 * (1 - r)).round().clamp(min=1).long())


def test_cfg_convention_and_maskbit_conversion():
    zc, zu = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(cfg(zc, zu, 1.0), zc)                   # w = 1: no guidance
    assert torch.equal(cfg(zc, zu, 0.0), zu)
    s = 7.1                                                            # MaskBit 12-bit: cond + s (cond - uncond)
    torch.testing.assert_close(cfg(zc, zu, maskbit_scale_to_w(s)), zc + s * (zc - zu))
    assert PRESETS["maskbit-12bit"]["sampler"]["guidance"] == pytest.approx(8.1)


def test_guidance_annealing():
    assert guidance_at(3.0, 0, 8, "linear") == 1.0 and guidance_at(3.0, 7, 8, "linear") == 3.0
    # MaskBit: s_i = s (1 - cos(pi (i/steps)^pow)) / 2, in our convention w_i = 1 + s_i
    s, steps, p = 7.1, 64, 3.0
    for i in (0, 10, 40, 63):
        expected = 1 + s * (1 - math.cos(math.pi * (i / steps) ** p)) / 2
        assert guidance_at(maskbit_scale_to_w(s), i, steps, "cosine", p) == pytest.approx(expected)
    assert guidance_at(2.0, 3, 8, "none") == 2.0


def tiny_models():
    torch.manual_seed(0)
    bit = LFQBert(img_size=32, hidden_dim=32, codebook_size=64, codebook_splits=2, depth=1, heads=2, mlp_dim=64,
                  nclass=5, input_stride=8).eval()
    git = MaskTransformer(img_size=64, hidden_dim=32, codebook_size=16, depth=1, heads=2, mlp_dim=64, nclass=5).eval()
    return bit, git


def test_guided_logits_batches_cond_and_null():
    bit, _ = tiny_models()
    tokens, labels = torch.full((3, 16, 2), bit.mask_id), torch.tensor([0, 1, 2])
    with torch.no_grad():
        zc, zu = bit.logits(tokens, labels), bit.logits(tokens, labels, torch.ones(3, dtype=torch.bool))
        torch.testing.assert_close(guided_logits(bit, tokens, labels, 2.5), zu + 2.5 * (zc - zu))


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("remask", ["confidence", "random"])
def test_sampler_deterministic_and_complete(which, remask):
    model = tiny_models()[which]
    labels = torch.tensor([0, 1, 2, 3])
    kw = dict(steps=5, schedule="arccos", temperature=1.0, randomize_temperature=4.0, remask=remask, guidance=3.0,
              guidance_anneal="cosine", scale_pow=2.0)
    a = sample(model, labels, generator=torch.Generator().manual_seed(7), **kw)
    b = sample(model, labels, generator=torch.Generator().manual_seed(7), **kw)
    c = sample(model, labels, generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (4, model.seq_len, model.splits)
    if which == 0:
        assert (a != model.mask_id).all(), "no mask token may survive the last step"
    assert a.max() < model.vocab


def test_sampler_keeps_given_tokens_and_one_step():
    bit, _ = tiny_models()
    init = torch.full((2, 16, 2), bit.mask_id)
    init[:, :4] = 3
    out = sample(bit, torch.tensor([0, 1]), steps=4, tokens=init, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :4], init[:, :4]) and (out != bit.mask_id).all()
    one = sample(bit, torch.tensor([0, 1]), steps=1, generator=torch.Generator().manual_seed(0))
    assert (one != bit.mask_id).all()


def test_guidance_first_step_and_one_step():
    for anneal in ("linear", "cosine"):
        assert guidance_at(3.0, 0, 4, anneal, 2.0) == 1.0, "step 0 of several is unguided, as in both official codes"
        assert guidance_at(3.0, 0, 1, anneal, 2.0) == 3.0, "one step: full guidance, our documented choice"


# Halton-MaskGIT v1.0's adap_sche (Di[M]O's MaskGIT baseline), arccos: the 16-step row is the one quoted from its code
@pytest.mark.parametrize("steps,m,expected", [
    (16, 256, [1, 6, 9, 10, 12, 14, 15, 16, 18, 19, 20, 21, 22, 23, 25, 25]),
    (12, 256, [1, 9, 13, 17, 19, 22, 24, 26, 28, 30, 32, 35]),
    (8, 256, [1, 18, 26, 32, 38, 43, 48, 50]),
    (16, 64, [1, 1, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6, 6]),
    (12, 64, [1, 2, 3, 4, 5, 5, 6, 7, 7, 8, 8, 8]),
    (8, 64, [1, 5, 6, 8, 9, 11, 12, 12])])
def test_halton_counts(steps, m, expected):
    counts = halton_counts(steps, m)
    assert counts.tolist() == expected and counts.sum() == m and counts.min() >= 1


def test_halton_counts_edges():
    assert halton_counts(1, 256).tolist() == [256]
    with pytest.raises(UserError, match="undefined for 64 steps"):
        halton_counts(64, 64)                                            # v1.0's last count would be -3


def test_maskbit_counts_are_cumulative():
    bit, _ = tiny_models()
    trace, steps, m = [], 6, 32
    sample(bit, torch.tensor([0, 1]), steps, randomize_temperature=2.0, generator=torch.Generator().manual_seed(0),
           trace=trace)
    for i, (_, still) in enumerate(trace):
        expected = max(1, math.floor(mask_ratio((i + 1) / steps).item() * m)) if i < steps - 1 else 0
        assert still.flatten(1).sum(1).tolist() == [min(expected, m - i - 1)] * 2


def test_halton_sampler_decodes_v1_positions():
    """Randomize off: every step is replayed from the trace with v1.0's own rules -- CFG (1 + s_i) cond - s_i uncond
    with s_i = s i/(T-1), softmax(logits * sm_temp), confidence p(sampled id), the count_i most confident masked
    entries decoded, a decoded entry decided for good even when its id is the mask class."""
    torch.manual_seed(0)
    git = MaskTransformer(img_size=128, hidden_dim=32, codebook_size=16, depth=2, heads=2, mlp_dim=64, nclass=5).eval()
    with torch.no_grad():
        git.tok_emb.weight[:git.vocab].mul_(0.05)                      # flat head: the mask class gets sampled
    labels, s, sm_temp, steps = torch.tensor([0, 1, 2, 3]), 8.0, 0.5, 8
    counts = [1, 5, 6, 8, 9, 11, 12, 12]
    trace = []
    out = sample(git, labels, steps, temperature=1 / sm_temp, randomize_temperature=0.0,
                 guidance=maskbit_scale_to_w(s), guidance_anneal="linear", step_counts="halton",
                 noise_anneal="halton", generator=torch.Generator().manual_seed(5), trace=trace)
    code, mask = torch.full((4, 64), git.mask_id), torch.ones(4, 64, dtype=torch.bool)
    drop = torch.ones(4, dtype=torch.bool)
    for i, (pred, still) in enumerate(trace):
        with torch.no_grad():
            c, u = git(code.view(4, 8, 8), labels, ~drop), git(code.view(4, 8, 8), labels, drop)
        s_i = s * i / (steps - 1)
        prob = torch.softmax(((1 + s_i) * c - s_i * u) * sm_temp, -1)  # [B, N, K+1]
        conf = prob.gather(-1, pred[..., :1])[..., 0].masked_fill(~mask, -math.inf)
        decoded = torch.zeros_like(mask).scatter_(1, conf.topk(counts[i], -1).indices, True)
        assert torch.equal(still[..., 0], mask & ~decoded), f"step {i}"
        code, mask = torch.where(decoded, pred[..., 0], code), mask & ~decoded
    assert len(trace) == steps - 1 and mask.sum(1).tolist() == [counts[-1]] * 4
    assert torch.equal(out[..., 0][~mask], code[~mask]) and (out != git.mask_id).sum() > 0
    assert ((code == git.mask_id) & ~mask).any(), "a sampled mask id must occur here and stay decided"


def test_released_samplers():
    """The maskgit preset samples as Di[M]O's baseline (Halton-MaskGIT v1.0, configs/DIMO_MaskGit.yaml); MaskBit
    presets keep MaskBit's sampler."""
    s = PRESETS["maskgit"]["sampler"]
    assert (s["steps"], s["temperature"], s["randomize_temperature"], s["guidance"], s["guidance_anneal"],
            s["step_counts"], s["noise_anneal"], s["remask"]) == (16, 1.0, 4.5, 4.0, "linear", "halton", "halton",
                                                                   "confidence")
    for name in ("maskbit-12bit", "maskbit-toy"):
        assert PRESETS[name]["sampler"]["step_counts"] == PRESETS[name]["sampler"]["noise_anneal"] == "maskbit"


def test_attention_output_dropout_maskbit_only():
    """MaskBit's BertAttention drops out the attention output (train mode only); MaskGIT's Attention does not."""
    torch.manual_seed(0)
    bit = LFQBert(img_size=32, hidden_dim=32, codebook_size=64, codebook_splits=2, depth=1, heads=2, mlp_dim=64,
                  nclass=5, input_stride=8, dropout=0.5).train()
    git = MaskTransformer(img_size=64, hidden_dim=32, codebook_size=16, depth=1, heads=2, mlp_dim=64, nclass=5,
                          dropout=0.5).train()
    x = torch.randn(4, 17, 32)
    zeros = (bit.transformer.layers[0][0](x) == 0).float().mean().item()
    assert 0.4 < zeros < 0.6
    assert (git.transformer.layers[0][0].fn(x) == 0).sum() == 0
    attn = bit.transformer.layers[0][0].eval()
    assert torch.equal(attn(x), attn.mha(x, x, x, need_weights=False)[0])


def test_explicit_attention_is_the_official_one_and_float32_at_its_core_under_autocast(monkeypatch):
    """SelfAttention computes nn.MultiheadAttention itself in two cases (teacher.py says why).  In float32 training,
    in the official [N, B, D] row order: equal to nn.MultiheadAttention bit for bit, output and every gradient,
    dropout included.  Under CPU bf16 autocast: in both row orders the same computation outside autocast, and under it
    the core sees float32, output and input gradient match float32's to bf16 precision."""
    torch.manual_seed(0)
    attn = SelfAttention(64, 4, dropout=0.1).train()
    x = torch.randn(4, 17, 64, requires_grad=True)
    torch.manual_seed(1)
    official = attn.mha(x, x, x, need_weights=False)[0]
    official_grads = torch.autograd.grad(official.square().sum(), [x, *attn.parameters()])
    for seq_first in (True, False):
        torch.manual_seed(1)
        assert torch.equal(attn.explicit_attention(x, seq_first), official)
    monkeypatch.setattr(attn.mha, "forward", None)                       # training must not go through it
    torch.manual_seed(1)
    out = attn(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *attn.parameters()])
    assert torch.equal(out, official) and all(torch.equal(a, b) for a, b in zip(grads, official_grads))
    monkeypatch.undo()
    attn.eval()
    reference = attn(x)
    (grad_reference,) = torch.autograd.grad(reference.square().sum(), x)
    core_dtypes, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        core_dtypes.append(q.dtype)
        return sdpa(q, k, v, *args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x)
    (grad,) = torch.autograd.grad(out.float().square().sum(), x)
    assert core_dtypes == [torch.float32] and out.dtype == torch.bfloat16
    scale = reference.abs().max().item()
    assert (out.float() - reference).abs().max().item() < 0.02 * scale
    assert not torch.equal(out.float(), reference)                       # bf16 projections really ran
    assert (grad - grad_reference).abs().max().item() < 0.02 * grad_reference.abs().max().item()
