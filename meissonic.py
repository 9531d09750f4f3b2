"""Meissonic's transformer (``Transformer2DModel``): a masked-token model over VQ ids, conditioned on CLIP text.

Loads the released ``MeissonFlow/Meissonic`` ``transformer/`` folder with ``strict=True`` and computes the official
logits (``tests/golden/SPEC_meissonic.md`` section 1; the Di[M]O copy adds one argument, ``noise_emb_perturb``, the
sigma_init of Di[M]O Sec. 4.3).  Read top to bottom, the forward is the SPEC's twelve steps:

    ids [B, H, W] --embed (+ sigma eps)--> [B, D, H, W] --2x2 conv--> image stream [B, N, D]  \\
    text hidden states [B, L, J] --linear, RMSNorm-----------------> text stream  [B, L, D]   } dual-stream blocks
    --concat (text first)--> [B, L+N, D] --single-stream blocks--> image part --2x2 transposed conv-->
    --head--> logits [B, K, H, W]

Every block is modulated (adaLN-zero) by one vector: the timestep's sinusoid through an MLP plus the pooled text
embedding, concatenated with five micro-conditions (width, height, crop top, crop left, aesthetic score), through
two MLPs.  Attention is joint over text and image, with RoPE over 3-axis positions: (0, row, col) for an image token
on the down-sampled grid, (0, 0, 0) for text (so text is never rotated).  The head predicts the K real codes only;
the mask id V - 1 can never be sampled.

The same uniform interface as the class-to-image teachers (teacher.py): ``logits(tokens [B, N, 1], cond, drop)``
where ``cond`` is a ``TextCondition`` holding the prompt's and the negative prompt's encodings, and ``drop`` selects
the negative one per sample (the unconditional branch of CFG, as in the official pipeline).

Shapes: B batch, H x W token grid, N = (H/2)(W/2) image tokens inside, L text tokens, D inner width (heads x Dh),
J text width, P pooled width (= D), K codebook size, V = vocabulary (K real codes + unused rows + mask).

Run: ``python meissonic.py`` builds a tiny model and prints its logits' shape and parameter count.
"""
import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

MICRO_CONDS = 5          # (orig width, orig height, crop top, crop left, aesthetic score), 256 sinusoid dims each
SINUSOID = 256


class TextCondition(NamedTuple):
    """A batch of prompts as Meissonic reads them: CLIP's penultimate hidden states and pooled projection, for the
    prompt and for the negative prompt (CFG's unconditional branch), the micro-conditions, and the timestep the
    forward multiplies by 1000 (None: 0, as Di[M]O passes to every network)."""
    hidden: torch.Tensor          # [B, L, J]
    pooled: torch.Tensor          # [B, P]
    neg_hidden: torch.Tensor      # [B, L, J]
    neg_pooled: torch.Tensor      # [B, P]
    micro_conds: torch.Tensor     # [B, 5]
    timestep: torch.Tensor = None  # [B]
    counter: bool = False         # the sampler passes the pipeline's step counter N-1-i as the timestep

    @property
    def shape(self):              # the batch, as for class labels [B]
        return self.pooled.shape[:1]

    @property
    def device(self):
        return self.pooled.device

    def at_step(self, i, steps):
        """The condition at sampler step i of N: the official pipeline passes the step counter t = N-1-i."""
        if not self.counter:
            return self
        return self._replace(timestep=torch.full(self.shape, float(steps - 1 - i), device=self.device))

    def select(self, drop):
        """(hidden, pooled, micro_conds, timestep) with the negative prompt where drop [B] is True."""
        if drop is None:
            return self.hidden, self.pooled, self.micro_conds, self.timestep
        d = drop.to(self.hidden.device).bool()
        return (torch.where(d[:, None, None], self.neg_hidden, self.hidden),
                torch.where(d[:, None], self.neg_pooled, self.pooled), self.micro_conds, self.timestep)


def sinusoid(s, dims=SINUSOID):
    """emb(s) = [cos(s w_k), sin(s w_k)], w_k = exp(-ln(10000) k / (dims/2)), all in float32 as the official code
    (at the pipeline's timesteps, x 1000, float64 would move the logits by 3e-4: SPEC section 4)."""
    half = dims // 2
    w = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=s.device) / half)
    arg = s.float()[:, None] * w[None]                                          # [M, dims/2]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * w over the last axis, the mean in float32 (eps 1e-6 throughout Meissonic)."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


def channel_norm(norm, x):
    """An RMSNorm over the channels of x [B, C, H, W] (the official code permutes to NHWC and back)."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def mlp(d_in, d, bias=True):
    m = nn.Module()
    m.linear_1, m.linear_2 = nn.Linear(d_in, d, bias=bias), nn.Linear(d, d, bias=bias)
    return m


def run_mlp(m, x):
    return m.linear_2(F.silu(m.linear_1(x)))


# ----------------------------------------------------------------------------------------------------------------
# RoPE over (axis 0, row, col) positions, and joint attention.
# ----------------------------------------------------------------------------------------------------------------
def image_ids(h, w, device=None):
    """(0, row, col) for each token of an h x w grid, row-major [h*w, 3] (the pipeline's ``_prepare_latent_image_ids``
    at the down-sampled grid)."""
    r, c = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([torch.zeros_like(r), r, c], dim=-1).reshape(h * w, 3).float()    # [h, w, 3] -> [hw, 3]


def rope_tables(ids, axes_dims, theta=10000.0):
    """ids [S, 3] -> (cos, sin) [S, Dh]: per axis a of width d_a, angle = p * theta^(-2k/d_a) in float64, each angle
    twice in a row (the pair (x_2m, x_2m+1) shares it), the axes concatenated; cast to float32 (SPEC step 7)."""
    angles = []
    for a, d in enumerate(axes_dims):
        freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=ids.device)[: d // 2] / d)
        angle = ids[:, a].double()[:, None] * freqs[None]                          # [S, d/2]
        angles.append(angle.repeat_interleave(2, dim=1))                            # [S, d]
    angle = torch.cat(angles, dim=-1)                                               # [S, Dh]
    return angle.cos().float(), angle.sin().float()


def apply_rope(x, cos, sin):
    """x [B, h, S, Dh] rotated pairwise: (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), in float32."""
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)                          # [..., Dh] -> 2 x [..., Dh/2]
    rotated = torch.stack([-x1, x0], dim=-1).flatten(-2)                            # [..., Dh]
    return (x.float() * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    """q/k/v of one stream (``to_*``) and, in dual-stream blocks, of the text stream (``add_*_proj``), per-head
    RMSNorm of q and k, RoPE, softmax attention over [text; image]."""

    def __init__(self, dim, heads, dual):
        super().__init__()
        self.heads, self.dual = heads, dual
        dh = dim // heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.norm_q, self.norm_k = RMSNorm(dh), RMSNorm(dh)
        if dual:
            self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(dim, dim) for _ in range(3))
            self.norm_added_q, self.norm_added_k = RMSNorm(dh), RMSNorm(dh)
            self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
            self.to_add_out = nn.Linear(dim, dim)

    def heads_of(self, x, proj, norm):
        return norm(proj(x).unflatten(-1, (self.heads, -1)).transpose(1, 2))       # [B, S, D] -> [B, h, S, Dh]

    def forward(self, x, rope, t=None):
        q, k, v = (self.heads_of(x, p, n) for p, n in ((self.to_q, self.norm_q), (self.to_k, self.norm_k),
                                                       (self.to_v, nn.Identity())))
        if t is not None:                                                         # text first: [t; x]
            tq, tk, tv = (self.heads_of(t, p, n) for p, n in ((self.add_q_proj, self.norm_added_q),
                                                              (self.add_k_proj, self.norm_added_k),
                                                              (self.add_v_proj, nn.Identity())))
            q, k, v = torch.cat([tq, q], 2), torch.cat([tk, k], 2), torch.cat([tv, v], 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)    # [B, h, S, Dh] -> [B, S, D]
        if t is None:
            return out
        lt = t.shape[1]
        return self.to_out[0](out[:, lt:]), self.to_add_out(out[:, :lt])


def feed_forward(dim):
    """diffusers' FeedForward with tanh GELU: net.0.proj (D -> 4D), net.1 dropout (no weights), net.2 (4D -> D)."""
    ff = nn.Module()
    ff.net = nn.ModuleList([nn.Module(), nn.Dropout(0.0), nn.Linear(4 * dim, dim)])
    ff.net[0].proj = nn.Linear(dim, 4 * dim)
    return ff


def run_ff(ff, x):
    return ff.net[2](F.gelu(ff.net[0].proj(x), approximate="tanh"))


def modulate(x, shift, scale):
    """LN0(x) (1 + scale) + shift: LayerNorm without affine weights, eps 1e-6 (adaLN-zero)."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


class DualBlock(nn.Module):
    """MMDiT block: image and text streams with their own weights, one joint attention (SPEC step 8)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.norm1_context = nn.Module(), nn.Module()
        self.norm1.linear, self.norm1_context.linear = nn.Linear(dim, 6 * dim), nn.Linear(dim, 6 * dim)
        self.attn = Attention(dim, heads, dual=True)
        self.ff, self.ff_context = feed_forward(dim), feed_forward(dim)

    def forward(self, h, t, temb, rope):
        sh1, sc1, g1, sh2, sc2, g2 = self.norm1.linear(F.silu(temb)).chunk(6, dim=-1)
        csh1, csc1, cg1, csh2, csc2, cg2 = self.norm1_context.linear(F.silu(temb)).chunk(6, dim=-1)
        a_img, a_txt = self.attn(modulate(h, sh1, sc1), rope, modulate(t, csh1, csc1))
        h = h + g1[:, None] * a_img
        h = h + g2[:, None] * run_ff(self.ff, modulate(h, sh2, sc2))
        t = t + cg1[:, None] * a_txt
        t = t + cg2[:, None] * run_ff(self.ff_context, modulate(t, csh2, csc2))
        return h, t


class SingleBlock(nn.Module):
    """Single-stream block on [text; image]: attention and an MLP in parallel, one output projection (SPEC step 9)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.norm = nn.Module()
        self.norm.linear = nn.Linear(dim, 3 * dim)
        self.attn = Attention(dim, heads, dual=False)
        self.proj_mlp, self.proj_out = nn.Linear(dim, 4 * dim), nn.Linear(5 * dim, dim)

    def forward(self, s, temb, rope):
        sh, sc, g = self.norm.linear(F.silu(temb)).chunk(3, dim=-1)
        n = modulate(s, sh, sc)
        both = torch.cat([self.attn(n, rope), F.gelu(self.proj_mlp(n), approximate="tanh")], dim=-1)  # [B, S, 5D]
        return s + g[:, None] * self.proj_out(both)


# ----------------------------------------------------------------------------------------------------------------
# The transformer.
# ----------------------------------------------------------------------------------------------------------------
class MeissonicTransformer(nn.Module):
    """``Transformer2DModel(**config)``: the constructor arguments of the official class (``patch_size``,
    ``in_channels`` and ``guidance_embeds`` are stored by it and unused by its forward; likewise here)."""

    FROZEN = ("embed", "mlm_layer")           # Di[M]O freezes both in the generator and the auxiliary model
    splits = 1

    def __init__(self, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                 joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56), vocab_size=8256,
                 codebook_size=8192, downsample=False, upsample=False, patch_size=1, in_channels=64,
                 guidance_embeds=False, sample_size=None):
        super().__init__()
        d = num_attention_heads * attention_head_dim
        if pooled_projection_dim != d:
            raise ValueError(f"pooled_projection_dim {pooled_projection_dim} must equal heads x head dim {d} (the "
                             f"pooled text passes cond_embed, of width {d}, before the text MLP)")
        if sum(axes_dims_rope) != attention_head_dim:
            raise ValueError(f"axes_dims_rope {list(axes_dims_rope)} must sum to attention_head_dim "
                             f"{attention_head_dim}")
        if guidance_embeds:
            raise ValueError("guidance_embeds=True (Flux's guidance embedding) is not part of Meissonic")
        self.axes_dims_rope, self.codebook_size, self.vocab_size = list(axes_dims_rope), codebook_size, vocab_size
        self.mask_id, self.token_grid, self.nclass = vocab_size - 1, sample_size, None
        self.embed = nn.Module()
        self.embed.embeddings, self.embed.layer_norm = nn.Embedding(vocab_size, d), RMSNorm(d)
        self.embed.conv = nn.Conv2d(d, d, 1, bias=False)
        self.cond_embed = mlp(pooled_projection_dim + SINUSOID * MICRO_CONDS, d, bias=False)
        self.time_text_embed = nn.Module()
        self.time_text_embed.timestep_embedder = mlp(SINUSOID, d)
        self.time_text_embed.text_embedder = mlp(pooled_projection_dim, d)
        self.context_embedder, self.encoder_proj_layer_norm = nn.Linear(joint_attention_dim, d), RMSNorm(d)
        self.down_block, self.up_block = nn.Module(), nn.Module()
        if downsample:
            self.down_block.downsample = nn.Module()
            self.down_block.downsample.norm = RMSNorm(d)
            self.down_block.downsample.conv = nn.Conv2d(d, d, 2, stride=2, bias=False)
        if upsample:
            self.up_block.upsample = nn.Module()
            self.up_block.upsample.norm = RMSNorm(d)
            self.up_block.upsample.conv = nn.ConvTranspose2d(d, d, 2, stride=2, bias=False)
        self.project_to_hidden_norm, self.project_to_hidden = RMSNorm(d), nn.Linear(d, d, bias=False)
        self.transformer_blocks = nn.ModuleList(DualBlock(d, num_attention_heads) for _ in range(num_layers))
        self.single_transformer_blocks = nn.ModuleList(SingleBlock(d, num_attention_heads)
                                                       for _ in range(num_single_layers))
        self.project_from_hidden_norm, self.project_from_hidden = RMSNorm(d), nn.Linear(d, d, bias=False)
        self.mlm_layer = nn.Module()
        self.mlm_layer.conv1, self.mlm_layer.layer_norm = nn.Conv2d(d, d, 1, bias=False), RMSNorm(d)
        self.mlm_layer.conv2 = nn.Conv2d(d, codebook_size, 1, bias=False)

    # -- the official forward, step by step (SPEC section 1) ----------------------------------------------------
    def conditioning(self, pooled_projections, micro_conds, timestep):
        """Steps 1-3: temb [B, D] from the pooled text, the micro-conditions and the timestep (x 1000)."""
        b = pooled_projections.shape[0]
        e_m = sinusoid(micro_conds.flatten()).reshape(b, -1)                        # [B*5, 256] -> [B, 1280]
        c = run_mlp(self.cond_embed, torch.cat([pooled_projections, e_m], dim=1))
        t = timestep.expand(b) if timestep.numel() == 1 else timestep
        temb = run_mlp(self.time_text_embed.timestep_embedder, sinusoid(t.float() * 1000).to(c.dtype))
        return c, temb + run_mlp(self.time_text_embed.text_embedder, c)

    def embed_ids(self, ids):
        """Step 4: ids [B, H, W] -> x [B, D, H, W] (Embedding, RMSNorm, 1x1 conv)."""
        return self.embed.conv(self.embed.layer_norm(self.embed.embeddings(ids)).permute(0, 3, 1, 2))

    def forward_embedded(self, x, encoder_hidden_states, pooled_projections, micro_conds, timestep=None,
                         trace=None, stop_after=None):
        """Steps 5-12 from the embedded ids x [B, D, H, W] -> logits [B, K, H, W].  ``trace`` (a dict) receives the
        intermediates the golden fixture stores; ``stop_after`` = k returns the joint sequence [B, L+N, D] after
        the k-th block (dual blocks first, then single ones), as a discriminator reads a backbone."""
        b, _, h, w = x.shape
        timestep = torch.zeros(1, device=x.device) if timestep is None else timestep.to(x.device)
        c, temb = self.conditioning(pooled_projections, micro_conds, timestep)
        t = self.encoder_proj_layer_norm(self.context_embedder(encoder_hidden_states))   # [B, L, D]
        if hasattr(self.down_block, "downsample"):
            ds = self.down_block.downsample
            x = ds.conv(F.pad(channel_norm(ds.norm, x), (0, 1, 0, 1)))                    # [B, D, H/2, W/2]
        gh, gw = x.shape[2:]
        down = x
        x = self.project_to_hidden(self.project_to_hidden_norm(x.permute(0, 2, 3, 1).reshape(b, gh * gw, -1)))
        ids = torch.cat([torch.zeros(t.shape[1], 3, device=x.device), image_ids(gh, gw, x.device)])  # [L+N, 3]
        rope = rope_tables(ids, self.axes_dims_rope)
        if trace is not None:
            trace.update(cond_embed_out=c, temb=temb, context_in=t, down_block_out=down, image_tokens_in=x)
        for i, block in enumerate(self.transformer_blocks):
            x, t = block(x, t, temb, rope)
            if trace is not None:
                trace.update({f"double_block_{i}_txt": t, f"double_block_{i}_img": x})
            if stop_after == i + 1:
                return torch.cat([t, x], dim=1)
        s = torch.cat([t, x], dim=1)                                                 # [B, L+N, D], text first
        for j, block in enumerate(self.single_transformer_blocks):
            s = block(s, temb, rope)
            if trace is not None:
                trace[f"single_block_{j}"] = s
            if stop_after == len(self.transformer_blocks) + j + 1:
                return s
        x = self.project_from_hidden(self.project_from_hidden_norm(s[:, t.shape[1]:]))
        if trace is not None:
            trace["project_from_hidden_out"] = x
        x = x.reshape(b, gh, gw, -1).permute(0, 3, 1, 2)                            # [B, N, D] -> [B, D, h, w]
        if hasattr(self.up_block, "upsample"):
            us = self.up_block.upsample
            x = us.conv(channel_norm(us.norm, x))                                     # [B, D, H, W]
        if trace is not None:
            trace["up_block_out"] = x
        m = self.mlm_layer
        return m.conv2(channel_norm(m.layer_norm, m.conv1(x)))                      # [B, K, H, W]

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, micro_conds, timestep=None,
                noise_emb_perturb=0.0, noise=None, trace=None):
        """The official signature (``img_ids``/``txt_ids`` are computed, not passed).  Di[M]O's variant:
        ``noise_emb_perturb`` = sigma > 0 replaces the embedded ids x by sigma eps + sqrt(1 - sigma^2) x at every
        position (Di[M]O Sec. 4.3, the sigma_init perturbation), eps = ``noise`` or N(0, I)."""
        x = self.embed_ids(hidden_states)
        if trace is not None:
            trace["embed_out"] = x
        if noise_emb_perturb > 0:
            eps = torch.randn_like(x) if noise is None else noise
            x = noise_emb_perturb * eps + math.sqrt(1 - noise_emb_perturb ** 2) * x
        return self.forward_embedded(x, encoder_hidden_states, pooled_projections, micro_conds, timestep, trace)

    # -- the uniform token-model interface (teacher.py) ---------------------------------------------------------
    def logits(self, tokens, cond, drop_label=None):
        """tokens [B, N, 1] (row-major over the grid) and a TextCondition -> logits [B, N, 1, K]; drop_label [B]
        picks the negative prompt (CFG's unconditional branch)."""
        return self.forward_embeddings(self.input_embed(self.features(tokens)), cond, drop_label)

    def features(self, tokens):
        """tokens [B, N, 1] -> the id grid [B, H, W] that ``embed`` reads."""
        b, n = tokens.shape[:2]
        return tokens.reshape(b, *self.grid_of(n))                                   # [B, N, 1] -> [B, H, W]

    def input_embed(self, ids):
        """The output of ``embed`` [B, D, H, W]: where Di[M]O adds its sigma_init perturbation (generator.py)."""
        return self.embed_ids(ids)

    def forward_embeddings(self, x, cond, drop_label=None):
        """The embedded (perhaps perturbed) ids x [B, D, H, W] and a TextCondition -> logits [B, N, 1, K]."""
        b, _, h, w = x.shape
        z = self.forward_embedded(x, *cond.select(drop_label))
        return z.reshape(b, self.codebook_size, h * w).permute(0, 2, 1)[:, :, None]  # [B, K, H, W] -> [B, N, 1, K]

    def grid_of(self, n):
        """The token grid of n tokens: the configured one, else the square one."""
        h, w = self.token_grid if self.token_grid else (math.isqrt(n), math.isqrt(n))
        if h * w != n:
            raise ValueError(f"{n} tokens do not fill the {h} x {w} token grid")
        return h, w

    @property
    def seq_len(self):
        h, w = self.token_grid
        return h * w

    def to_indices(self, tokens):
        """Tokens [B, N, 1] -> VQ ids [B, N]; a mask id left in (never sampled by this head) is clamped to the last
        code, as Di[M]O clamps ids before decoding."""
        return tokens[..., 0].clamp(max=self.codebook_size - 1)

    def from_indices(self, indices):
        return indices[..., None]                                                      # [B, N] -> [B, N, 1]

    def frozen_parameters(self):
        return [p for n, p in self.named_parameters() if n.split(".")[0] in self.FROZEN]


if __name__ == "__main__":
    torch.manual_seed(0)
    model = MeissonicTransformer(num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                                 joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
                                 vocab_size=72, codebook_size=64, downsample=True, upsample=True).eval()
    ids = torch.full((2, 8, 8), 71)
    with torch.no_grad():
        z = model(ids, torch.randn(2, 8, 32), torch.randn(2, 32), torch.tensor([[64.0, 64, 0, 0, 6]] * 2))
    print("logits", tuple(z.shape), "parameters", sum(p.numel() for p in model.parameters()))
