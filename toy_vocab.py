"""Toy vocabularies with a known answer: an exact oracle teacher over V^L and total-variation distances.

An explicit joint distribution P over sequences of L tokens from a vocabulary of V (a float array of shape
(V,)*L summing to 1, ``--joint P.npy``, or a random correlated one from ``--vocab V --length L --seed S``) defines
the perfect masked-diffusion teacher: for any partially masked sequence, the conditional of position i is

    p(x_i = v | visible tokens) = sum of P over all sequences that agree with the visible tokens and have x_i = v,
                                  normalised,

computed exactly by ``OracleTeacher`` with one matrix product over the V^L table.  Three reference samplers come
from it, each measured from the same number of samples:

* the exact multi-step sampler (one token per step, L steps): exact samples of P; its empirical TV is the floor
  that finite sampling alone leaves;
* the one-step teacher (every position from the all-mask conditional at once): the product of the marginals, far
  from a correlated P (TV about 0.85 on sharp multi-modal joints);
* the distilled generator: a small transformer (``ToyTransformer``) trained by distill.py.

The generator and auxiliary model start, as in the paper, from a masked model of the teacher: ``pretrain_mdm``
trains the small transformer briefly on the oracle's exact conditionals.

Shapes: B batch, L (= N) positions, S = 1 split, V vocabulary.  Run ``python toy_vocab.py`` for the reference TVs.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from config import UserError
from masking import random_mask
from bert import FeedForward, MaskedTokenModel, PreNorm, SelfAttention


# ----------------------------------------------------------------------------------------------------------------
# Joint distributions.
# ----------------------------------------------------------------------------------------------------------------
def random_joint(vocab, length, seed, modes=8, sharpness=0.95, concentration=4.0):
    """A correlated joint: a mixture of `modes` random sequences, each position kept with prob `sharpness`
    (otherwise uniform), with Dirichlet(concentration) mode weights.  -> float64 array of shape (V,)*L."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, vocab, size=(modes, length))
    weights = rng.dirichlet(np.full(modes, concentration))
    p = np.zeros((vocab,) * length)
    for w, c in zip(weights, centres):
        factors = [np.full(vocab, (1 - sharpness) / vocab) for _ in range(length)]
        for i in range(length):
            factors[i][c[i]] += sharpness
        outer = factors[0]
        for f in factors[1:]:
            outer = np.multiply.outer(outer, f)
        p += w * outer
    return p / p.sum()


def markov_joint(vocab, length, seed, sharpness=0.8):
    """A Markov chain: x_1 ~ Dirichlet(1) start, then x_i given x_(i-1) goes to that state's preferred successor
    with prob `sharpness`, otherwise uniform.  -> float64 array of shape (V,)*L."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(vocab))
    transition = np.full((vocab, vocab), (1 - sharpness) / vocab)
    transition[np.arange(vocab), rng.integers(0, vocab, vocab)] += sharpness
    for _ in range(length - 1):
        p = p[..., :, None] * transition                               # p[..., a] T[a, b] -> (V,)*(i+1)
    return p / p.sum()


def family_joint(seed):
    """One joint of the robustness family (``python bench.py sweep --n N``): V in 3-6, L in 3-5; a
    mixture of 4-10 modes with Dirichlet(1) weights (unequal) and sharpness 0.7-0.95 (3 draws in 4) or a Markov
    chain of sharpness 0.5-0.9; half of them mixed with a uniform floor of up to 5 %.  -> (joint, description)."""
    rng = np.random.default_rng(10_000 + seed)
    vocab, length = int(rng.integers(3, 7)), int(rng.integers(3, 6))
    floor = float(rng.uniform(0, 0.05)) if rng.random() < 0.5 else 0.0
    if rng.random() < 0.25:
        sharpness = float(rng.uniform(0.5, 0.9))
        p, kind = markov_joint(vocab, length, seed, sharpness), f"markov s={sharpness:.2f}"
    else:
        modes, sharpness = int(rng.integers(4, 11)), float(rng.uniform(0.7, 0.95))
        p = random_joint(vocab, length, seed, modes, sharpness, concentration=1.0)
        kind = f"{modes} modes s={sharpness:.2f}"
    p = (1 - floor) * p + floor / p.size
    return p / p.sum(), dict(vocab=vocab, length=length, kind=kind, floor=round(floor, 3))


def check_joint(p, path="--joint"):
    """A --joint array must be a probability table of shape (V,)*L."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim < 1 or len(set(p.shape)) != 1 or p.shape[0] < 2:
        raise UserError(f"{path} has shape {p.shape}; it must be (V,)*L with V >= 2, e.g. (4, 4, 4, 4)")
    if not np.isfinite(p).all() or (p < 0).any():
        raise UserError(f"{path} has negative or non-finite entries; it must be a probability table")
    if abs(p.sum() - 1) > 1e-6:
        raise UserError(f"{path} sums to {p.sum():.6g}, not 1; normalise it (p / p.sum())")
    if p.size > 2 ** 20:
        raise UserError(f"{path} has {p.size} states; the exact oracle handles up to 2^20")
    return p


def all_sequences(vocab, length):
    """[V^L, L] every sequence, in the row-major order of a (V,)*L table."""
    return torch.tensor(np.array(np.unravel_index(np.arange(vocab ** length), (vocab,) * length)).T)


# ----------------------------------------------------------------------------------------------------------------
# The exact teacher and the small student.
# ----------------------------------------------------------------------------------------------------------------
class OracleTeacher(MaskedTokenModel):
    """Exact conditionals of a joint P, in the uniform interface (tokens [B, L, 1] -> log-probs [B, L, 1, V]).
    Unconditional: labels are accepted and ignored, so CFG is the identity."""

    def __init__(self, joint):
        super().__init__()
        joint = torch.as_tensor(joint, dtype=torch.float64)
        self.vocab, self.seq_len, self.p_shape = joint.shape[0], joint.dim(), tuple(joint.shape)
        self.mask_id, self.splits, self.nclass, self.codebook_size = self.vocab, 1, 1, self.vocab
        self.register_buffer("p", joint.flatten())
        self.register_buffer("states", all_sequences(self.vocab, self.seq_len))

    def logits(self, tokens, labels=None, drop_label=None):
        x = tokens[..., 0]                                               # [B, L, 1] -> [B, L]
        visible = x != self.mask_id
        agree = ((self.states[None] == x[:, None]) | ~visible[:, None]).all(-1)  # [B, V^L] consistent states
        w = agree.double() * self.p                                     # posterior weight of each state
        onehot = F.one_hot(self.states, self.vocab).double()            # [V^L, L, V]
        cond = torch.einsum("bs,slv->blv", w, onehot)
        cond = cond / cond.sum(-1, keepdim=True).clamp_min(1e-300)
        return torch.log(cond.clamp_min(1e-30)).float()[:, :, None]     # [B, L, V] -> [B, L, 1, V]

    @torch.no_grad()
    def sample_exact(self, n, generator=None):
        """L-step sampler, one position per step: exact samples of P.  -> [n, L, 1]."""
        x = torch.full((n, self.seq_len, 1), self.mask_id, dtype=torch.long)
        for i in range(self.seq_len):
            probs = self.logits(x)[:, i, 0].exp()
            x[:, i, 0] = torch.multinomial(probs, 1, generator=generator)[:, 0]
        return x

    @torch.no_grad()
    def sample_one_step(self, n, generator=None):
        """Every position from the all-mask conditional at once: the product of the marginals."""
        x = torch.full((n, self.seq_len, 1), self.mask_id, dtype=torch.long)
        probs = self.logits(x[:1])[0, :, 0].exp()                      # [L, V]
        return torch.stack([torch.multinomial(probs[i], n, replacement=True, generator=generator)
                            for i in range(self.seq_len)], 1)[..., None]


class ToyTransformer(MaskedTokenModel):
    """A small pre-norm transformer in the uniform interface: tok_emb over V ids + mask + 2 class ids."""
    FROZEN = ("tok_emb", "pos_emb", "head")

    def __init__(self, vocab, length, width=64, depth=2, heads=4):
        super().__init__()
        self.vocab, self.seq_len, self.mask_id, self.splits, self.nclass = vocab, length, vocab, 1, 1
        self.codebook_size = vocab
        self.tok_emb = nn.Embedding(vocab + 1 + 2, width)               # ids, mask, class 0, null class
        self.pos_emb = nn.Parameter(torch.randn(1, length + 1, width) * 0.02)
        self.layers = nn.ModuleList(nn.ModuleList([PreNorm(width, SelfAttention(width, heads, 0.0)),
                                                   PreNorm(width, FeedForward(width, 4 * width, 0.0))])
                                    for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def features(self, tokens):
        return self.tok_emb(tokens[..., 0])                             # [B, L, 1] -> [B, L, D]

    def soft_features(self, probs):
        return probs[..., 0, :] @ self.tok_emb.weight[:self.vocab]

    def input_embed(self, x):
        return x

    def forward_embeddings(self, e, labels, drop_label=None):
        cls = self.class_ids(labels, drop_label, 1) + self.vocab + 1
        x = torch.cat([e, self.tok_emb(cls)[:, None]], 1) + self.pos_emb  # class slot last: [B, L+1, D]
        for attn, ffn in self.layers:
            x = ffn(attn(x))
        return self.head(self.norm(x[:, :self.seq_len]))[:, :, None]     # [B, L, V] -> [B, L, 1, V]


def pretrain_mdm(model, oracle, steps=600, batch=256, lr=3e-3, generator=None):
    """Train the student as a masked model of the oracle: KL(oracle conditional || model) on masked entries."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    labels = torch.zeros(batch, dtype=torch.long)
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        x0 = oracle.sample_exact(batch, generator)
        x_t, mask = random_mask(x0, oracle.mask_id, "arccos", generator)
        target = oracle.logits(x_t).exp()
        logp = F.log_softmax(model.logits(x_t, labels), -1)
        loss = -(target * logp).sum(-1)[mask].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.item()


# ----------------------------------------------------------------------------------------------------------------
# Total variation.
# ----------------------------------------------------------------------------------------------------------------
def empirical(samples, vocab):
    """[n, L, 1] samples -> empirical probabilities over the V^L table (row-major)."""
    x = samples[..., 0].long()
    idx = (x * (vocab ** torch.arange(x.shape[1] - 1, -1, -1))).sum(1)
    return torch.bincount(idx, minlength=vocab ** x.shape[1]).double() / len(x)


def total_variation(samples, oracle):
    return 0.5 * (empirical(samples, oracle.vocab) - oracle.p).abs().sum().item()


def reference_tvs(oracle, n, seed):
    """TV of the exact multi-step sampler (the floor) and of the one-step teacher, from n samples each."""
    g = torch.Generator().manual_seed(seed)
    return dict(tv_teacher_multistep=round(total_variation(oracle.sample_exact(n, g), oracle), 4),
                tv_teacher_1step=round(total_variation(oracle.sample_one_step(n, g), oracle), 4))


if __name__ == "__main__":
    oracle = OracleTeacher(random_joint(4, 4, seed=0))
    print(f"V=4 L=4 joint: entropy {-(oracle.p * oracle.p.clamp_min(1e-300).log()).sum() / math.log(2):.2f} bits,",
          reference_tvs(oracle, 20000, seed=0))
