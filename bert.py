"""The bidirectional transformer blocks of the class-to-image teachers, and the token-model interface they share.

MaskBit's LFQBert (maskbit.py) and MaskGIT's MaskTransformer (maskgit.py) are both a stack of post-/pre-norm BERT
blocks over image tokens plus one class token; their blocks differ only in layout, so they live here once, with the
official key names.  ``MaskedTokenModel`` is the uniform interface that the generator, the distillation loop and the
evaluation use (teacher.py states it); Meissonic (meissonic.py) offers the same methods without these blocks.

Shapes: B batch, N tokens (h*w), S splits, V classes per split, D width, F input-feature width.

Run: nothing to run on its own; ``python teacher.py sample`` samples from the teachers built on it.
"""
import torch
import torch.nn as nn

from tokenizer import combine_tokens, split_tokens


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
