"""Masked-diffusion teachers: MaskBit's bit-token transformer (LFQBert) and MaskGIT's MaskTransformer.

Both load the released checkpoints with ``strict=True`` and compute the same logits as the official classes
(``tests/golden/SPEC.md`` sections 1 and 3).  Both also offer one uniform interface, which is all that the
generator, the distillation loop and the evaluation use:

    tokens [B, N, S] --features--> x [B, N, F] --input_embed--> e [B, N, D] --forward_embeddings--> logits [B, N, S, V]

* MaskBit: a token is S per-split ids, each in [0, V) or the mask id V; ``features`` are its bits in {-1, +1}
  (0 for a masked split, LSB first, split-major), ``input_embed`` is the linear ``input_proj``.  Logits are per
  split: V = 2^(bits/S) classes each, no mask class.
* MaskGIT: S = 1; ``features`` are rows of the shared ``tok_emb`` table and ``input_embed`` is the identity.  The
  head is tied to ``tok_emb`` and keeps the mask class, so V = K + 1 (as in Di[M]O, where sampling, the divergence
  and the auxiliary loss all run over 1025 classes; a sampled mask id decodes as code K-1).

``model(tokens, labels, drop_label)`` keeps each official forward's token layout; ``drop_label=None`` means that
no label is dropped for *both* models.  (Trap in the official MaskBit code: there ``None`` replaces every label by
the null class, and the null label is written into the caller's tensor.  Here nothing is ever written in place.)

Also here, canonical for the whole project: the multi-step sampler (``sample``; MaskBit's and Halton-MaskGIT
v1.0's, which differ in their step counts and noise annealing) and building a teacher/tokenizer pair from a preset
and files (``load_pair``).  The mask schedule and CFG it uses live one floor down, in masking.py.

Shapes: B batch, N tokens (h*w), S splits, V classes per split, D width, F input-feature width.

Run: ``python teacher.py sample --teacher maskbit --steps 64 --out grid.png`` (add ``--ckpt G.bin
--tokenizer-ckpt T.bin`` for a released pair); ``python train.py teacher --data toy --tokenizer T.pt --out G.pt``.
"""
import json
import math
import os

import torch
import torch.nn as nn

from checkpoints import load_model
from config import (PRESETS, ArgumentParser, UserError, check_range, get_preset, maskbit_scale_to_w, parse_labels,
                    runtime)
from data import save_image_grid
from masking import SCHEDULES, STEP_COUNTS, guidance_at, guided_logits, halton_counts, maskbit_masked_after
from tokenizer import build_tokenizer, combine_tokens, expected_bits, index_to_bits, split_tokens


# ----------------------------------------------------------------------------------------------------------------
# Transformer blocks (key names follow the official modules).
# ----------------------------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` (packed in_proj, bias, batch_first, no mask) with an optional LayerNorm beside it.
    MaskBit's BertAttention also drops out the attention output (``output_dropout``; no weights, so no key); MaskGIT's
    Attention does not.  Only train mode sees the difference (a generator copied from a released teacher)."""

    def __init__(self, dim, heads, dropout, norm_eps=None, output_dropout=0.0):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, dropout=dropout, bias=True, batch_first=True)
        self.dropout = nn.Dropout(output_dropout)
        if norm_eps is not None:
            self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x):
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            return self.dropout(self.explicit_attention(x, seq_first=False))
        if x.device.type == "cpu" and self.training:
            return self.dropout(self.explicit_attention(x, seq_first=True))
        return self.dropout(self.mha(x, x, x, need_weights=False)[0])  # eval: its fastpath, as the caches were made

    def explicit_attention(self, x, seq_first):
        """nn.MultiheadAttention's computation, written out, [B, N, D] -> [B, N, D].  seq_first keeps its [N, B, D] row
        order: then it equals nn.MultiheadAttention bit for bit, forward and backward, minus one copy of the packed
        projection (a float32 training step 1.1x faster on CPU).  Under CPU autocast the projections run in bf16 and
        the core (SDPA) in float32: the CPU's bf16 flash-attention backward took 5x the float32 one's time
        (docs/speed.md); that path keeps the [B, N, D] order its --amp runs were measured with."""
        m, (b, n) = self.mha, x.shape[:2]
        qkv = nn.functional.linear(x.transpose(0, 1) if seq_first else x, m.in_proj_weight, m.in_proj_bias)
        order = (1, 2, 0, 3) if seq_first else (0, 2, 1, 3)              # [N|B, B|N, H, D/H] -> [B, H, N, D/H]
        q, k, v = (t.unflatten(-1, (m.num_heads, -1)).permute(order).float() for t in qkv.chunk(3, dim=-1))
        with torch.autocast("cpu", enabled=False):
            o = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=m.dropout if self.training else 0.0)
        if seq_first:
            return m.out_proj(o.permute(2, 0, 1, 3).reshape(n, b, -1)).transpose(0, 1)   # -> [N, B, D] -> [B, N, D]
        return m.out_proj(o.transpose(1, 2).flatten(2))                  # [B, H, N, D/H] -> [B, N, D]


class FeedForward(nn.Module):
    """Linear -> exact GELU -> Linear.  MaskBit: net = [Linear, GELU, Linear, Dropout];
    MaskGIT: net = [Linear, GELU, Dropout, Linear, Dropout] (hence the different key numbers)."""

    def __init__(self, dim, mlp_dim, dropout, norm_eps=None, maskgit_layout=False):
        super().__init__()
        inner = [nn.Dropout(dropout)] if maskgit_layout else []
        self.net = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), *inner, nn.Linear(mlp_dim, dim),
                                 nn.Dropout(dropout))
        if norm_eps is not None:
            self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x):
        return self.net(x)


class PreNorm(nn.Module):
    """MaskGIT's pre-norm wrapper: x + fn(norm(x)) (LayerNorm eps 1e-5)."""

    def __init__(self, dim, fn):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x):
        return x + self.fn(self.norm(x))


class MaskedTokenModel(nn.Module):
    """The uniform interface shared by both teachers (and so by generators and auxiliary models)."""

    def logits(self, tokens, labels, drop_label=None):
        """tokens [B, N, S] -> logits [B, N, S, V]."""
        return self.forward_embeddings(self.input_embed(self.features(tokens)), labels, drop_label)

    def to_indices(self, tokens):
        """Per-split tokens [B, N, S] -> the tokenizer's full ids [B, N]."""
        return combine_tokens(tokens, self.codebook_size, self.splits)

    def from_indices(self, indices):
        """Full ids [B, N] -> per-split tokens [B, N, S]."""
        return split_tokens(indices, self.codebook_size, self.splits)

    def class_ids(self, labels, drop_label, null_id):
        """Labels with dropped entries replaced by the null class; never modifies the caller's tensor."""
        if drop_label is None:
            return labels.long()
        return torch.where(drop_label.to(labels.device).bool(), torch.full_like(labels.long(), null_id), labels.long())

    def hidden_states(self, e, labels, layers, drop_label=None):
        """States [B, N+1, D] after each transformer block in ``layers`` (1-based), run only as deep as the deepest
        one: Soft-Di[M]O's multi-layer discriminator reads the backbone here."""
        out, x = [], self.embed_sequence(e, labels, drop_label)
        for i in range(max(layers)):
            x = self.block(i, x)
            if i + 1 in layers:
                out.append(x)
        return out

    def frozen_parameters(self):
        """Di[M]O freezes the embedding and output layers of the generator and the auxiliary model."""
        return [p for n, p in self.named_parameters() if n.split(".")[0] in self.FROZEN]


# ----------------------------------------------------------------------------------------------------------------
# MaskBit generator: LFQBert (SPEC section 1).
# ----------------------------------------------------------------------------------------------------------------
class LFQBert(MaskedTokenModel):
    FROZEN = ("input_proj", "class_emb", "pos_emb", "prediction_layer")

    def __init__(self, img_size, hidden_dim, codebook_size, codebook_splits, depth, heads, mlp_dim, dropout=0.1,
                 nclass=1000, input_stride=16, use_prenorm=False):
        super().__init__()
        bits = int(math.log2(codebook_size))
        if 2 ** bits != codebook_size or bits % codebook_splits:
            raise ValueError(f"codebook_size {codebook_size} must be 2^bits with bits divisible by the splits "
                             f"({codebook_splits})")
        self.seq_len = (img_size // input_stride) ** 2
        self.splits, self.num_bits, self.nclass, self.use_prenorm = codebook_splits, bits, nclass, use_prenorm
        self.codebook_size = codebook_size
        self.split_bits = bits // codebook_splits
        self.vocab = self.mask_id = 2 ** self.split_bits               # the mask id is one past the last split id
        self.pos_emb = nn.Parameter(torch.zeros(1, self.seq_len + 1, hidden_dim))
        self.register_buffer("bits_to_indices", 2 ** torch.arange(self.split_bits, dtype=torch.int32))
        self.class_emb = nn.Embedding(nclass + 1, hidden_dim)
        self.input_proj = nn.Linear(bits, hidden_dim)
        self.first_layer = nn.Sequential(nn.LayerNorm(hidden_dim, eps=1e-12), nn.Dropout(dropout))
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(nn.ModuleList([
            SelfAttention(hidden_dim, heads, dropout, norm_eps=1e-12, output_dropout=dropout),
            FeedForward(hidden_dim, mlp_dim, dropout, norm_eps=1e-12)]) for _ in range(depth))
        if use_prenorm:
            self.norm_after_transformer = nn.LayerNorm(hidden_dim, eps=1e-12)
        self.last_layer = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                        nn.LayerNorm(hidden_dim, eps=1e-12))
        self.prediction_layer = nn.Linear(hidden_dim, codebook_splits * self.vocab)
        nn.init.trunc_normal_(self.pos_emb, std=0.02)

    def features(self, tokens):
        """[B, N, S] per-split ids -> bit features [B, N, bits]: +-1 per bit (LSB first), 0 for a masked split."""
        bits = index_to_bits(tokens.clamp(max=self.vocab - 1), self.split_bits)       # [B, N, S, bits/S]
        bits = torch.where((tokens == self.mask_id)[..., None], torch.zeros_like(bits), bits)
        return bits.flatten(-2)                                        # [B, N, S, bits/S] -> [B, N, bits]

    def soft_features(self, probs):
        """Soft-Di[M]O's expected input: E_p[bits] per split, probs [B, N, S, V] -> [B, N, bits] in [-1, 1]."""
        return expected_bits(probs)

    def input_embed(self, x):
        return self.input_proj(x)

    def embed_sequence(self, e, labels, drop_label=None):
        """e [B, N, D] and labels -> the first block's input [B, N+1, D] (class slot last)."""
        c = self.class_emb(self.class_ids(labels, drop_label, self.nclass))[:, None]  # [B] -> [B, 1, D]
        return self.first_layer(torch.cat([e, c], dim=1) + self.pos_emb)

    def block(self, i, x):
        attn, ffn = self.transformer.layers[i]
        if self.use_prenorm:
            x = x + attn(attn.norm(x))
            return x + ffn(ffn.norm(x))
        x = attn.norm(x + attn(x))
        return ffn.norm(x + ffn(x))

    def forward_embeddings(self, e, labels, drop_label=None):
        b = e.shape[0]
        x = self.hidden_states(e, labels, (len(self.transformer.layers),), drop_label)[0]  # after the last block
        if self.use_prenorm:
            x = self.norm_after_transformer(x)
        y = self.prediction_layer(self.last_layer(x))
        return y.reshape(b, self.seq_len + 1, self.splits, self.vocab)[:, :self.seq_len]  # [B,N+1,S*V]->[B,N,S,V]

    def forward(self, img_tokens, class_labels, drop_label_mask=None):
        """Official layout: img_tokens [B, N, S] -> logits [B, N, S, V].  drop_label_mask=None drops nothing."""
        return self.logits(img_tokens, class_labels, drop_label_mask)


# ----------------------------------------------------------------------------------------------------------------
# MaskGIT: Di[M]O's MaskTransformer (SPEC section 3).
# ----------------------------------------------------------------------------------------------------------------
class MaskTransformer(MaskedTokenModel):
    FROZEN = ("tok_emb", "pos_emb", "bias")                            # the head is tied to tok_emb

    def __init__(self, img_size, hidden_dim, codebook_size, depth, heads, mlp_dim, dropout=0.1, nclass=1000):
        super().__init__()
        self.grid = img_size // 16                                      # token grid side P (official: fixed f=16)
        self.seq_len, self.splits, self.nclass = self.grid ** 2, 1, nclass
        self.mask_id, self.vocab = codebook_size, codebook_size + 1    # logits keep the mask class
        self.codebook_size = codebook_size
        vocab_in = codebook_size + 1 + nclass + 1                      # visual ids, mask, classes, null class
        self.tok_emb = nn.Embedding(vocab_in, hidden_dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, self.seq_len + 1, hidden_dim))
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        self.first_layer = nn.Sequential(
            nn.LayerNorm(hidden_dim, eps=1e-12), nn.Dropout(dropout), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.LayerNorm(hidden_dim, eps=1e-12), nn.Dropout(dropout), nn.Linear(hidden_dim, hidden_dim))
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(nn.ModuleList([
            PreNorm(hidden_dim, SelfAttention(hidden_dim, heads, dropout)),
            PreNorm(hidden_dim, FeedForward(hidden_dim, mlp_dim, dropout, maskgit_layout=True))])
            for _ in range(depth))
        self.last_layer = nn.Sequential(nn.LayerNorm(hidden_dim, eps=1e-12), nn.Dropout(dropout),
                                        nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                        nn.LayerNorm(hidden_dim, eps=1e-12))
        self.bias = nn.Parameter(torch.zeros(self.seq_len + 1, vocab_in))

    def features(self, tokens):
        """[B, N, 1] (or [B, N]) ids -> token embeddings [B, N, D]."""
        return self.tok_emb(tokens[..., 0] if tokens.dim() == 3 else tokens)

    def soft_features(self, probs):
        """Soft-Di[M]O's expected embedding sum_j p_j E_j under tok_emb: probs [B, N, 1, V] -> [B, N, D]."""
        return probs[..., 0, :] @ self.tok_emb.weight[:self.vocab].to(probs.dtype)

    def input_embed(self, x):
        return x

    def embed_sequence(self, e, labels, drop_label=None):
        """e [B, N, D] and labels -> the first block's input [B, N+1, D] (class slot last)."""
        ids = self.class_ids(labels, drop_label, self.nclass) + self.codebook_size + 1  # null class when dropped
        return self.first_layer(torch.cat([e, self.tok_emb(ids)[:, None]], dim=1) + self.pos_emb)

    def block(self, i, x):
        attn, ffn = self.transformer.layers[i]
        return ffn(attn(x))

    def forward_embeddings(self, e, labels, drop_label=None):
        x = self.hidden_states(e, labels, (len(self.transformer.layers),), drop_label)[0]  # after the last block
        x = self.last_layer(x)
        logits = x @ self.tok_emb.weight.t() + self.bias               # tied head: [B, N+1, vocab_in]
        return logits[:, :self.seq_len, None, :self.vocab]             # -> [B, N, 1, K+1]

    def forward(self, img_token, y, drop_label=None):
        """Official layout: img_token [B, P, P] or [B, N] -> logits [B, N, K+1].  drop_label=None drops nothing."""
        tokens = img_token.reshape(img_token.shape[0], -1, 1)          # [B, P, P] -> [B, N, 1]
        return self.logits(tokens, y, drop_label)[:, :, 0]


def build_teacher(family, config):
    """'maskbit' -> LFQBert(**config); 'maskgit' -> MaskTransformer(**config)."""
    return LFQBert(**config) if family == "maskbit" else MaskTransformer(**config)


def load_pair(preset, teacher_ckpt=None, tokenizer_ckpt=None, verbose=True):
    """-> (teacher, tokenizer, resolved preset name).  Presets with bundled weights need no paths; ``maskbit``
    without paths means the bundled toy MaskBit pair, said in one line."""
    p = get_preset(preset)
    if teacher_ckpt is None and tokenizer_ckpt is None:
        if preset == "maskbit" and "bundled" in PRESETS.get("maskbit-toy", {}):
            if verbose:
                print("note: --teacher maskbit without checkpoints uses the bundled toy MaskBit pair "
                      "(preset maskbit-toy); for the released 12-bit pair pass --teacher-ckpt "
                      "maskbit_generator_12bit.bin --tokenizer-ckpt maskbit_tokenizer_12bit.bin")
            preset, p = "maskbit-toy", PRESETS["maskbit-toy"]
        if "bundled" not in p:
            raise UserError(f"preset '{preset}' has no bundled weights: pass --teacher-ckpt (released: "
                            f"{p['released']['generator']}) and --tokenizer-ckpt ({p['released']['tokenizer']})")
        teacher_ckpt, tokenizer_ckpt = p["bundled"]["teacher"], p["bundled"]["tokenizer"]
    elif teacher_ckpt is None or tokenizer_ckpt is None:
        raise UserError("pass both --teacher-ckpt and --tokenizer-ckpt (a teacher samples tokens of its own tokenizer)")
    teacher, _ = load_model("teacher", preset, teacher_ckpt, build_teacher, verbose)
    tokenizer, _ = load_model("tokenizer", preset, tokenizer_ckpt, build_tokenizer, verbose)
    return teacher.requires_grad_(False), tokenizer.requires_grad_(False), preset


# ----------------------------------------------------------------------------------------------------------------
# The multi-step MaskGIT / MaskBit sampler (its step counts, MaskBit's or Halton-MaskGIT v1.0's: masking.py).
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample(model, labels, steps, schedule="arccos", temperature=1.0, randomize_temperature=0.0, remask="confidence",
           guidance=1.0, guidance_anneal="none", scale_pow=1.0, step_counts="maskbit", noise_anneal="maskbit",
           generator=None, tokens=None, trace=None):
    """Iterative decoding from all-mask (or from ``tokens`` [B, N, S] with mask ids) -> tokens [B, N, S].

    Step i of T = ``steps``: predict every masked entry from softmax(logits / temperature) under guidance
    ``guidance_at(...)``; decode the masked entries of highest confidence and leave the others masked, as many as
    ``step_counts`` says (see above; at least 1 decoded while steps remain).  Confidence is log p(sampled id) plus
    Gumbel noise * randomize_temperature * (1 - progress), progress per ``noise_anneal``, or a uniform random
    number (remask='random').  The last step fills every entry.  An entry once decoded stays decoded, even when
    the sampled id is the mask class (MaskGIT's 1025-way head), as in v1.0, which tracks its mask apart from the ids.
    trace: a list that receives (pred [B, N, S], still masked [B, N, S]) after every step but the last."""
    if step_counts not in STEP_COUNTS or noise_anneal not in STEP_COUNTS:
        raise ValueError(f"step_counts and noise_anneal must be one of {STEP_COUNTS}")
    b = labels.shape[0]
    if tokens is None:
        tokens = torch.full((b, model.seq_len, model.splits), model.mask_id, dtype=torch.long, device=labels.device)
    tokens = tokens.clone()
    masked = tokens == model.mask_id                                   # [B, N, S]
    m = tokens[0].numel()
    counts = halton_counts(steps, m, schedule).to(tokens.device) if step_counts == "halton" else None
    for i in range(steps):
        n_masked = masked.flatten(1).sum(1)                            # [B]
        if n_masked.max() == 0:
            break
        w = guidance_at(guidance, i, steps, guidance_anneal, scale_pow)
        logits = guided_logits(model, tokens, labels, w).float() / temperature
        probs = torch.softmax(logits, dim=-1)                          # [B, N, S, V]
        pred = torch.multinomial(probs.flatten(0, 2), 1, generator=generator).reshape(tokens.shape)  # -> [B, N, S]
        pred = torch.where(masked, pred, tokens)
        if i == steps - 1:
            return pred
        if remask == "random":
            conf = torch.rand(tokens.shape, generator=generator, device=tokens.device)
        else:
            progress = (i + 1) / steps if noise_anneal == "maskbit" else i / (steps - 1)
            conf = torch.log(probs.gather(-1, pred[..., None])[..., 0].clamp_min(1e-30))
            u = torch.rand(tokens.shape, generator=generator, device=tokens.device).clamp(1e-20, 1 - 1e-7)
            conf = conf - torch.log(-torch.log(u)) * randomize_temperature * (1 - progress)  # + Gumbel noise
        conf = torch.where(masked, conf, torch.full_like(conf, float("inf")))  # never re-mask a decided entry
        if counts is None:
            keep_masked = maskbit_masked_after(i, steps, m, schedule).to(tokens.device)
        else:
            keep_masked = n_masked - counts[i]
        keep_masked = torch.minimum(keep_masked.clamp(min=1), n_masked - 1).clamp(min=0)  # [B]
        rank = conf.flatten(1).argsort(-1).argsort(-1)                 # 0 = least confident
        masked = (rank < keep_masked[:, None]).reshape(tokens.shape)   # [B, M] -> [B, N, S]
        tokens = torch.where(masked, torch.full_like(pred, model.mask_id), pred)
        if trace is not None:
            trace.append((pred, masked))
    return tokens


@torch.no_grad()
def tokens_to_images(model, tokenizer, tokens):
    """Tokens [B, N, S] of a teacher (or its one-step copy) -> images [B, 3, H, W], float32 in [0, 1], on the CPU."""
    return tokenizer.indices_to_images(model.to_indices(tokens)).float().clamp(0, 1).cpu()


# ----------------------------------------------------------------------------------------------------------------
# The sampler's command line.
# ----------------------------------------------------------------------------------------------------------------
def add_sampler_args(parser):
    """The teacher sampler's knobs; None means 'the preset's default'."""
    g = parser.add_argument_group("teacher sampler (defaults: the preset's)")
    g.add_argument("--steps", type=int, help="decoding steps")
    g.add_argument("--schedule", choices=SCHEDULES, help="mask schedule")
    g.add_argument("--temperature", type=float, help="softmax temperature (> 0): softmax(logits / T)")
    g.add_argument("--sm-temp", type=float, help="Halton-MaskGIT's softmax(logits * sm_temp): T = 1 / sm_temp")
    g.add_argument("--randomize-temperature", type=float, help="Gumbel noise on the confidence, annealed to 0")
    g.add_argument("--remask", choices=("confidence", "random"), help="which entries stay masked")
    g.add_argument("--step-counts", choices=STEP_COUNTS, help="entries decoded per step: MaskBit's or Halton v1.0's")
    g.add_argument("--noise-anneal", choices=STEP_COUNTS, help="Gumbel annealing: 1-(i+1)/T (maskbit), 1-i/(T-1)")
    g.add_argument("--guidance", type=float, help="CFG w in z_u + w (z_c - z_u); 1 = no guidance")
    g.add_argument("--maskbit-scale", "--halton-cfg", dest="maskbit_scale", type=float,
                   help="CFG in MaskBit's / Halton-MaskGIT's form cond + s (cond - uncond): w = s + 1")
    g.add_argument("--guidance-anneal", choices=("none", "linear", "cosine"), help="guidance annealing")
    g.add_argument("--scale-pow", type=float, help="power of MaskBit's cosine guidance annealing")


def sampler_settings(args, preset):
    """Merge the command line over the preset's sampler defaults and check every value."""
    s = dict(get_preset(preset)["sampler"])
    for key in s:
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    if getattr(args, "maskbit_scale", None) is not None:
        s["guidance"] = maskbit_scale_to_w(args.maskbit_scale)
    if getattr(args, "sm_temp", None) is not None:
        s["temperature"] = 1.0 / check_range("--sm-temp", args.sm_temp, low=0, low_open=True)
    check_range("--steps", s["steps"], low=1)
    check_range("--temperature", s["temperature"], low=0, low_open=True)
    check_range("--randomize-temperature", s["randomize_temperature"], low=0)
    check_range("--guidance", s["guidance"], low=0)
    check_range("--scale-pow", s["scale_pow"], low=0, low_open=True)
    return s


def main_sample(argv=None):
    parser = ArgumentParser(prog="teacher.py sample", description="multi-step sampling from a masked teacher")
    parser.add_argument("--teacher", default="maskbit", help="preset name (python config.py lists them)")
    parser.add_argument("--ckpt", "--teacher-ckpt", dest="ckpt", help="teacher weights (.bin/.pth/.pt)")
    parser.add_argument("--tokenizer-ckpt", help="tokenizer weights (.bin/last.ckpt/.pt)")
    parser.add_argument("--n", type=int, default=32, help="number of images")
    parser.add_argument("--labels", help="class ids, comma separated (default: 0, 1, 2, ... cycled)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="grid.png", help="PNG grid; the settings go to the same name .json")
    add_sampler_args(parser)
    args = parser.parse_args(argv)
    check_range("--n", args.n, low=1)
    rt = runtime(args.device)
    teacher, tokenizer, preset = load_pair(args.teacher, args.ckpt, args.tokenizer_ckpt)
    settings = sampler_settings(args, preset)
    teacher, tokenizer = teacher.to(rt.device), tokenizer.to(rt.device)
    labels = parse_labels(args.labels, args.n, teacher.nclass).to(rt.device)
    gen = torch.Generator(rt.device).manual_seed(args.seed)
    tokens = sample(teacher, labels, generator=gen, **settings)
    save_image_grid(tokens_to_images(teacher, tokenizer, tokens), args.out)
    record = dict(teacher=preset, teacher_ckpt=args.ckpt, tokenizer_ckpt=args.tokenizer_ckpt, n=args.n,
                  labels=labels.tolist(), seed=args.seed, device=str(rt.device), **settings)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {args.out} ({args.n} images, {settings['steps']} steps, guidance w={settings['guidance']:.2f})")


def main(argv):
    """python teacher.py sample ...  (training a teacher: python train.py teacher ...)"""
    if argv[:1] == ["train"]:
        raise UserError("teacher training is 'python train.py teacher ...' (the trainer sits above the models)")
    if argv[:1] != ["sample"]:
        raise UserError("usage: python teacher.py sample [--help]  (training: python train.py teacher)")
    main_sample(argv[1:])


if __name__ == "__main__":
    import sys

    from config import cli
    cli(lambda: main(sys.argv[1:]))
