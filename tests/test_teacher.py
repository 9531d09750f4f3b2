"""Bit tokens, splits, the mask schedule, classifier-free guidance and the multi-step sampler."""
import math

import pytest
import torch

from config import PRESETS, maskbit_scale_to_w
from teacher import LFQBert, MaskTransformer, cfg, guidance_at, guided_logits, mask_ratio, random_mask, sample
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
