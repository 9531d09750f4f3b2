"""MaskGIT's MaskTransformer as Di[M]O ships it: a pre-norm BERT over VQ ids with a tied head and one class token.

Loads the released MaskGIT checkpoints with ``strict=True`` and computes the official logits (``tests/golden/SPEC.md``
section 3).  S = 1; ``features`` are rows of the shared ``tok_emb`` table and ``input_embed`` is the identity.  The
head is tied to ``tok_emb`` and keeps the mask class, so V = K + 1 (as in Di[M]O, where sampling, the divergence and
the auxiliary loss all run over 1025 classes; a sampled mask id decodes as code K-1).

Shapes: B batch, N tokens (h*w), V classes, D width.

Run: ``python teacher.py sample --teacher maskgit --teacher-ckpt MaskGIT_ImageNet_256.pth --tokenizer-ckpt last.ckpt``.
"""
import torch
import torch.nn as nn

from bert import FeedForward, MaskedTokenModel, PreNorm, SelfAttention


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
