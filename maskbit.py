"""MaskBit's generator, LFQBert: a BERT over bit tokens (LFQ, split into groups), with one class token.

Loads the released MaskBit generators with ``strict=True`` and computes the official logits (``tests/golden/SPEC.md``
section 1).  A token is S per-split ids, each in [0, V) or the mask id V; ``features`` are its bits in {-1, +1} (0
for a masked split, LSB first, split-major), ``input_embed`` is the linear ``input_proj``; logits are per split,
V = 2^(bits/S) classes each, no mask class.  Trap in the official code, avoided here: its ``drop_label_mask=None``
replaces every label by the null class and writes it into the caller's tensor.

Shapes: B batch, N tokens (h*w), S splits, V classes per split, D width, F input-feature width (bits).

Run: ``python teacher.py sample --teacher maskbit`` (the bundled toy MaskBit pair).
"""
import math

import torch
import torch.nn as nn

from bert import FeedForward, MaskedTokenModel, SelfAttention
from tokenizer import expected_bits, index_to_bits


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
