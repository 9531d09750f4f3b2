"""MaskGen-VQ (``MaskGen_VQ`` of bytedance/1d-tokenizer): Soft-Di[M]O's text-to-image teacher, a masked-token model
over TA-TiTok's 128 one-dimensional ids, conditioned on CLIP text.

Loads the released ``generator_maskgen_vq_l`` / ``_xl`` weights with ``strict=True`` and computes the official
logits (``tests/golden/SPEC_maskgen.md`` section 2).  It is Stable Diffusion 3's MM-DiT in miniature:

    ids [B, N] --embeddings + pos_embed--> image stream [B, N, D]                     \\
    CLIP penultimate states [B, L, T] --text_embed_proj--> text stream [B, L, D]       } joint blocks (image first)
    [pooled text ; aesthetic sinusoid] --cond_pooled_proj--> c [B, D]: adaLN of every block and of the final norm
    --final adaptive LayerNorm--> h [B, N, D] --h @ embeddings[:K]^T (tied head, no bias)--> logits [B, N, K]

There is no timestep and no mask-ratio input: the aesthetic score (6.5 when sampling) is the only scalar.  The
last block is ``context_pre_only``: its text stream only supplies keys and values (an AdaLayerNormContinuous
modulates it, scale before shift) and is then dropped.  No positions on the text, no RoPE, no q/k norm.

A trap stated once: the official class **re-masks its own input in train mode** (a random arccos ratio), so a
teacher must run in eval mode.  This module never masks anything itself; ``train()`` is refused at ``forward``
unless ``allow_train=True`` (Di[M]O's generator and auxiliary copies, which pass the ids they mean).

The uniform interface of teacher.py: ``logits(tokens [B, N, 1], MaskGenCondition, drop)``.

Shapes: B batch, N image tokens (128 released), L text tokens (77), T text width (768), M aesthetic sinusoid width
(256), D width, K codebook size (8192); the embedding table has K + 1 + C + 1 rows (mask id K; the legacy class rows
after it are unused by the forward).

Run: ``python maskgen.py`` builds a tiny model, prints its logits' shape, and counts the released sizes.
"""
import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoints import load_folder
from config import UserError
from meissonic import TextCondition, feed_forward, modulate, run_ff


class MaskGenCondition(NamedTuple):
    """A batch of prompts as MaskGen reads them: CLIP's penultimate states and projected pooled state for the prompt
    and for the empty prompt (CFG's unconditional branch, as the official sampler), the aesthetic score, and the
    prompt's final-layer states, which only TA-TiTok's decoder reads (so decoding needs the prompt too)."""
    hidden: torch.Tensor          # [B, L, T]
    pooled: torch.Tensor          # [B, 1, T]
    neg_hidden: torch.Tensor      # [B, L, T]
    neg_pooled: torch.Tensor      # [B, 1, T]
    aesthetic: torch.Tensor       # [B]
    final: torch.Tensor           # [B, L, T]

    shape, device = TextCondition.shape, TextCondition.device   # the batch [B] and device, read off ``pooled``

    def at_step(self, i, steps):  # no timestep: the same condition at every sampler step
        return self

    def select(self, drop):
        """(hidden, pooled, aesthetic) with the empty prompt's where drop [B] is True (the score is never dropped)."""
        if drop is None:
            return self.hidden, self.pooled, self.aesthetic
        d = drop.to(self.hidden.device).bool()[:, None, None]
        return torch.where(d, self.neg_hidden, self.hidden), torch.where(d, self.neg_pooled, self.pooled), \
            self.aesthetic


def aesthetic_sinusoid(score, dims):
    """[B] aesthetic scores -> [B, dims]: s = 100 score, f_k = 1000^(-k / (dims/2)), [sin(s f) ; cos(s f)] (a zero
    column after them for odd dims), in float32 whatever the model's dtype (as the official code computes it)."""
    half = dims // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32, device=score.device) / half)
    angle = 100.0 * score.float()[:, None] * freqs[None]                                       # [B, M/2]
    return F.pad(torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1), (0, dims % 2))


class JointAttention(nn.Module):
    """Separate q/k/v for the image (``to_*``) and text (``add_*_proj``) streams, one softmax over [image; text]."""

    def __init__(self, dim, heads, text_out):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        if text_out:                                                      # absent in the context-pre-only block
            self.to_add_out = nn.Linear(dim, dim)

    def forward(self, x, c):
        n = x.shape[1]
        q, k, v = (torch.cat([a(x), b(c)], 1).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # -> [B, h, N+L, D/h]
                   for a, b in ((self.to_q, self.add_q_proj), (self.to_k, self.add_k_proj),
                                (self.to_v, self.add_v_proj)))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)      # [B, h, S, D/h] -> [B, S, D]
        return self.to_out[0](out[:, :n]), (self.to_add_out(out[:, n:]) if hasattr(self, "to_add_out") else None)


class JointBlock(nn.Module):
    """diffusers' ``JointTransformerBlock`` (SD3, no dual attention, no q/k norm): adaLN-zero on both streams, joint
    attention, a tanh-GELU MLP per stream; ``last`` = context_pre_only."""

    def __init__(self, dim, heads, last):
        super().__init__()
        self.last = last
        self.norm1, self.norm1_context = nn.Module(), nn.Module()
        self.norm1.linear = nn.Linear(dim, 6 * dim)
        self.norm1_context.linear = nn.Linear(dim, (2 if last else 6) * dim)
        self.attn = JointAttention(dim, heads, text_out=not last)
        self.ff = feed_forward(dim)
        if not last:
            self.ff_context = feed_forward(dim)

    def forward(self, x, ctx, c):
        sh1, sc1, g1, sh2, sc2, g2 = self.norm1.linear(F.silu(c)).chunk(6, dim=-1)
        if self.last:
            scale, shift = self.norm1_context.linear(F.silu(c)).chunk(2, dim=-1)      # AdaLayerNormContinuous
            a_img, _ = self.attn(modulate(x, sh1, sc1), modulate(ctx, shift, scale))
        else:
            csh1, csc1, cg1, csh2, csc2, cg2 = self.norm1_context.linear(F.silu(c)).chunk(6, dim=-1)
            a_img, a_txt = self.attn(modulate(x, sh1, sc1), modulate(ctx, csh1, csc1))
            ctx = ctx + cg1[:, None] * a_txt
            ctx = ctx + cg2[:, None] * run_ff(self.ff_context, modulate(ctx, csh2, csc2))
        x = x + g1[:, None] * a_img
        x = x + g2[:, None] * run_ff(self.ff, modulate(x, sh2, sc2))
        return x, (None if self.last else ctx)


class MaskGenVQ(nn.Module):
    """``MaskGen_VQ``: the constructor takes the official config's numbers (``from_config`` reads the yaml's dict)."""

    def __init__(self, codebook_size=8192, num_latent_tokens=128, text_embed_dim=768, decoder_embed_dim=1024,
                 decoder_depth=16, decoder_num_heads=16, micro_condition=True, micro_condition_embed_dim=256,
                 condition_num_classes=1000, sample_aesthetic_score=6.5, weight_tying=True):
        super().__init__()
        d, k = decoder_embed_dim, codebook_size
        self.codebook_size, self.mask_id, self.num_tokens = k, k, num_latent_tokens
        self.aes_dims = micro_condition_embed_dim if micro_condition else 0       # 0: no aesthetic score at all
        self.sample_aesthetic_score = sample_aesthetic_score
        self.embeddings = nn.Embedding(k + 1 + condition_num_classes + 1, d)
        if weight_tying:                                                  # the released models
            self.lm_head = nn.Module()
            self.lm_head.weight = self.embeddings.weight                  # one tensor under two keys
        else:
            self.lm_head = nn.Linear(d, k)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_latent_tokens, d))
        self.text_embed_proj = nn.Linear(text_embed_dim, d)
        self.cond_pooled_proj = nn.Linear(text_embed_dim + self.aes_dims, d)
        self.blocks = nn.ModuleList(JointBlock(d, decoder_num_heads, last=i == decoder_depth - 1)
                                    for i in range(decoder_depth))
        self.norm = nn.Module()
        self.norm.linear = nn.Linear(d, 2 * d)
        self.allow_train = False

    @classmethod
    def from_config(cls, config):
        """The official config dict (``model.vq_model`` and ``model.maskgen``, as in configs/infer/MaskGen/*.yaml)."""
        vq, mg = config["model"]["vq_model"], config["model"]["maskgen"]
        return cls(codebook_size=vq["codebook_size"], num_latent_tokens=vq["num_latent_tokens"],
                   text_embed_dim=vq.get("text_embed_dim", 768), decoder_embed_dim=mg["decoder_embed_dim"],
                   decoder_depth=mg["decoder_depth"], decoder_num_heads=mg["decoder_num_heads"],
                   micro_condition=mg["micro_condition"], micro_condition_embed_dim=mg["micro_condition_embed_dim"],
                   condition_num_classes=mg["condition_num_classes"],
                   sample_aesthetic_score=mg.get("sample_aesthetic_score", 6.0),
                   weight_tying=mg.get("weight_tying", True))

    def condition(self, pooled, aesthetic_score):
        """c = cond_pooled_proj([pooled ; sinusoid(aes)]): [B, 1, T], [B] -> [B, 1, D] (pooled alone without
        micro-conditioning)."""
        if not self.aes_dims:
            return self.cond_pooled_proj(pooled)
        aes = aesthetic_sinusoid(aesthetic_score, self.aes_dims).to(pooled.dtype)[:, None]    # [B] -> [B, 1, M]
        return self.cond_pooled_proj(torch.cat([pooled, aes], dim=-1))

    def forward_embedded(self, x, condition, condition_pooled, aesthetic_score, trace=None):
        """The forward from the image stream's input x [B, N, D] (token embeddings + positions): where the soft
        embedding of Soft-Di[M]O enters.  trace (a dict) collects the SPEC's intermediates."""
        if self.training and not self.allow_train:
            raise RuntimeError("MaskGenVQ in train mode: the official class re-masks its input there; call .eval() "
                               "(or set allow_train for a Di[M]O copy that passes its own masked ids)")
        trace = {} if trace is None else trace
        ctx = trace["text_embed_proj"] = self.text_embed_proj(condition)                       # [B, L, D]
        c = self.condition(condition_pooled, aesthetic_score)
        trace["cond_pooled_proj"] = c
        c = c[:, 0]                                                                             # [B, 1, D] -> [B, D]
        for i, block in enumerate(self.blocks):
            x, ctx = block(x, ctx, c)
            trace[f"block{i}_image"] = x
            if ctx is not None:
                trace[f"block{i}_context"] = ctx
        scale, shift = self.norm.linear(F.silu(c)).chunk(2, dim=-1)                            # scale first
        h = trace["final_norm"] = modulate(x, shift, scale)
        if isinstance(self.lm_head, nn.Linear):
            return self.lm_head(h)
        return h @ self.embeddings.weight[:self.codebook_size].T                                # [B, N, K]

    def embed(self, ids):
        """ids [B, N] (mask id K allowed) -> the image stream's input [B, N, D]."""
        return self.embeddings(ids) + self.pos_embed[:, :ids.shape[1]]

    def forward(self, input_tokens, condition, condition_pooled, aesthetic_score=None, trace=None):
        """Official call order; aesthetic_score None = the sampling score of the config (6.5 released)."""
        if aesthetic_score is None:
            aesthetic_score = torch.full((len(input_tokens),), self.sample_aesthetic_score,
                                         device=input_tokens.device)
        return self.forward_embedded(self.embed(input_tokens), condition, condition_pooled, aesthetic_score, trace)

    # -- the uniform token-model interface (teacher.py) ---------------------------------------------------------
    splits, nclass, token_grid = 1, None, None

    def logits(self, tokens, cond, drop_label=None):
        """tokens [B, N, 1] and a MaskGenCondition -> logits [B, N, 1, K]; drop_label [B] picks the empty prompt."""
        hidden, pooled, aesthetic = cond.select(drop_label)
        return self(tokens[..., 0], hidden, pooled, aesthetic)[:, :, None]          # [B, N, K] -> [B, N, 1, K]

    @property
    def seq_len(self):
        return self.num_tokens

    def to_indices(self, tokens):
        """Tokens [B, N, 1] -> TA-TiTok ids [B, N]; a mask id left in is clamped to the last code."""
        return tokens[..., 0].clamp(max=self.codebook_size - 1)

    def from_indices(self, indices):
        return indices[..., None]                                                      # [B, N] -> [B, N, 1]


def load_maskgen(folder):
    """A released ``generator_maskgen_vq_*`` folder (config.json: the official nested config; model.safetensors or
    pytorch_model.bin), strictly.  The hub's safetensors writer stores a tied tensor once, under one of its two
    names: the other name gets the same tensor back, and nothing else is filled in."""
    def build(c):
        if "maskgen" not in c.get("model", {}):
            raise UserError(f"'{folder}/config.json' is not a MaskGen config (no model.maskgen): another family?")
        return MaskGenVQ.from_config(c)

    def tie(state):
        names = ("embeddings.weight", "lm_head.weight")
        if sum(n in state for n in names) == 1 and "lm_head.bias" not in state:
            state = dict(state, **{n: state.get(names[0], state.get(names[1])) for n in names})
        return state
    return load_folder(folder, "MaskGen generator", build, tie)[0]


RELEASED = {"L": dict(decoder_embed_dim=1024, decoder_depth=16, decoder_num_heads=16),
            "XL": dict(decoder_embed_dim=1280, decoder_depth=20, decoder_num_heads=16)}


def parameter_count(model):
    """Parameters as the official class counts them: the tied table once."""
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    torch.manual_seed(0)
    model = MaskGenVQ(codebook_size=64, num_latent_tokens=8, text_embed_dim=32, decoder_embed_dim=32, decoder_depth=2,
                      decoder_num_heads=2, micro_condition_embed_dim=16, condition_num_classes=10).eval()
    ids = torch.randint(0, 65, (2, 8))
    logits = model(ids, torch.randn(2, 8, 32), torch.randn(2, 1, 32))
    print("tiny MaskGen-VQ logits", tuple(logits.shape), f"{parameter_count(model):,} parameters")
    with torch.device("meta"):
        for name, size in RELEASED.items():
            print(f"MaskGen-{name}: {parameter_count(MaskGenVQ(**size)) / 1e6:.1f} M parameters")
