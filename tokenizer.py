"""Image tokenizers: MaskBit's VQGAN+ with lookup-free quantisation (LFQ) and the taming VQGAN used by MaskGIT.

Both load the released checkpoints with ``strict=True`` (the key names are the official ones, see
``tests/golden/SPEC.md`` sections 2 and 4) and compute the same outputs as the official classes.

* ``LFQTokenizer`` (MaskBit, arXiv 2409.16211): a conv encoder gives C channels per latent position; LFQ keeps
  only their signs, so a token is a C-bit integer and its "codebook entry" is its bit vector in {-1, +1}^C, least
  significant bit first.  The decoder is continuous: it also accepts any latent in [-1, 1]^C, which is the path
  Soft-Di[M]O's expected bit vectors take.
* ``VQGAN`` (taming-transformers, f=16, as in Di[M]O): nearest-code vector quantisation, decode from indices or
  from continuous code vectors.

Conventions shared by the rest of the project ("the uniform interface", both classes):
  ``images_to_indices(images) -> [B, N]``, ``indices_to_images(indices) -> images``,
  ``latents_to_images(latents [B, N, F]) -> images``, ``expected_latents(probs [B, N, S, V]) -> [B, N, F]``,
  with images in [0, 1] (MaskBit's convention; the taming model maps to [-1, 1] inside) and N = h*w tokens in
  row-major order.  Bit tokens can be factorised into S splits (``split_tokens`` / ``combine_tokens``): split 0
  holds the least significant bits, exactly as MaskBit's generator sees them.

Shapes: B batch, C latent channels (= bits for LFQ), h, w latent grid, N = h*w tokens, S splits, V vocabulary
(per split), F latent width (C for LFQ, embed_dim for VQ).

Run ``python tokenizer.py`` for a CPU demo; ``python train.py tokenizer --data toy --out T.pt`` trains a small LFQ
tokenizer on the toy data.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from config import UserError


# ----------------------------------------------------------------------------------------------------------------
# Bit tokens: index <-> bits (LSB first) and the codebook-split factorisation.
# ----------------------------------------------------------------------------------------------------------------
def index_to_bits(indices, num_bits):
    """[...] integer ids -> [..., num_bits] float32 in {-1, +1}; feature c is bit c of the id (LSB first)."""
    powers = 2 ** torch.arange(num_bits, device=indices.device)
    return ((indices.long()[..., None] & powers) != 0).float() * 2.0 - 1.0


def bits_to_index(bits):
    """[..., num_bits] floats -> [...] int64 ids; a bit is 1 where the value is > 0 (exactly 0 counts as -1)."""
    powers = 2 ** torch.arange(bits.shape[-1], device=bits.device)
    return ((bits > 0).long() * powers).sum(-1)


def expected_bits(probs):
    """Soft bit tokens (Soft-Di[M]O for MaskBit): E_p[bits] of each split, concatenated split-major.
    probs [B, N, S, V] -> [B, N, S*log2(V)] in [-1, 1]; for a one-hot p this is exactly the token's bit vector."""
    b, n, splits, v = probs.shape
    table = index_to_bits(torch.arange(v, device=probs.device), int(math.log2(v))).to(probs.dtype)  # [V, bits/S]
    return torch.einsum("bnsv,vc->bnsc", probs, table).reshape(b, n, -1)    # [B, N, S, bits/S] -> [B, N, bits]


def split_tokens(tokens, codebook_size, splits):
    """Full ids [...] -> per-split ids [..., S]: t_s = (T >> s*shift) & (2^shift - 1), split 0 = lowest bits."""
    if splits == 1:
        return tokens.long()[..., None]
    shift = int(math.log2(codebook_size)) // splits
    return torch.stack([(tokens.long() >> (s * shift)) & (2 ** shift - 1) for s in range(splits)], dim=-1)


def combine_tokens(split, codebook_size, splits):
    """Per-split ids [..., S] -> full ids [...] (int64; MaskBit's own combine returns the same values as float32)."""
    if splits == 1:
        return split[..., 0].long()
    shift = int(math.log2(codebook_size)) // splits
    return sum(split[..., s].long() << (s * shift) for s in range(splits))


# ----------------------------------------------------------------------------------------------------------------
# MaskBit VQGAN+ with lookup-free quantisation (SPEC section 2).
# ----------------------------------------------------------------------------------------------------------------
def group_norm(channels, eps):
    return nn.GroupNorm(32, channels, eps=eps, affine=True)


class Conv2dSame(nn.Conv2d):
    """Conv with TensorFlow 'SAME' padding: total pad max((ceil(i/s)-1)*s + k - i, 0), extra pixel after."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class ResidualBlock(nn.Module):
    """MaskBit's residual block.  When the width changes, the 1x1 shortcut is applied to the block's own output h
    (not to the input x, which is then dropped): that is what the released checkpoints were trained with."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in, 1e-6), Conv2dSame(c_in, c_out, 3, bias=False)
        self.norm2, self.conv2 = group_norm(c_out, 1e-6), Conv2dSame(c_out, c_out, 3, bias=False)
        if c_in != c_out:
            self.nin_shortcut = Conv2dSame(c_out, c_out, 1, bias=False)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.nin_shortcut(h) if hasattr(self, "nin_shortcut") else x)


class Stage(nn.Module):
    """A list of residual blocks, optionally followed by a (down or up) sampling conv."""

    def __init__(self, c_in, c_out, num_blocks):
        super().__init__()
        self.res_blocks = nn.ModuleList(ResidualBlock(c_in if k == 0 else c_out, c_out) for k in range(num_blocks))

    def forward(self, x):
        for block in self.res_blocks:
            x = block(x)
        return x


class LFQTokenizer(nn.Module):
    """MaskBit's ConvVQModel(legacy=False) with the LookupFreeQuantizer; ``config`` is the official vq_model dict."""

    def __init__(self, config):
        super().__init__()
        self.config = dict(config)
        hc, mult, nrb = config["hidden_channels"], list(config["channel_mult"]), config["num_res_blocks"]
        levels, self.num_bits = config["num_resolutions"], config["token_size"]
        if len(mult) != levels:
            raise ValueError(f"channel_mult {mult} must have num_resolutions={levels} entries")
        self.sample_with_conv = config.get("sample_with_conv", True)
        m0, m1 = [1] + mult, mult + [mult[-1]]
        enc, dec = nn.Module(), nn.Module()
        enc.conv_in = Conv2dSame(config["num_channels"], hc, 3, bias=False)
        enc.down = nn.ModuleList(Stage(hc * m0[i], hc * m0[i + 1], nrb) for i in range(levels))
        for i in range(levels - 1):
            if self.sample_with_conv:
                enc.down[i].down_conv = Conv2dSame(hc * m0[i + 1], hc * m0[i + 1], 3, stride=2)
        enc.mid = Stage(hc * mult[-1], hc * mult[-1], nrb)
        enc.norm_out, enc.conv_out = group_norm(hc * mult[-1], 1e-6), Conv2dSame(hc * mult[-1], self.num_bits, 1)
        nrb_dec = config.get("num_res_blocks_decoder", nrb)
        dec.conv_in = Conv2dSame(self.num_bits, hc * mult[-1], 3)
        dec.mid = Stage(hc * mult[-1], hc * mult[-1], nrb_dec)
        # decoder.up.0 is the deepest level; stage j belongs to level i = levels-1-j and runs in index order.
        dec.up = nn.ModuleList(Stage(hc * m1[i + 1], hc * m1[i], nrb_dec) for i in reversed(range(levels)))
        for j in range(levels - 1):
            dec.up[j].upsample_conv = Conv2dSame(hc * m1[levels - 1 - j], hc * m1[levels - 1 - j], 3)
        dec.norm_out, dec.conv_out = group_norm(hc * mult[0], 1e-6), Conv2dSame(hc * mult[0], config["num_channels"], 3)
        self.encoder, self.decoder = enc, dec
        self.quantize = nn.Module()
        self.quantize.register_buffer("bits_to_indices", 2 ** torch.arange(self.num_bits, dtype=torch.int32))
        self.quantize.register_buffer("codebook", index_to_bits(torch.arange(2 ** self.num_bits), self.num_bits))
        self.downsample = 2 ** (levels - 1)

    # --- official calls -------------------------------------------------------------------------------------------
    def encode_z(self, images):
        """Images [B, 3, H, W] in [0, 1] -> pre-quantisation z [B, C, h, w] (official ``encoder(image)``)."""
        e = self.encoder
        x = e.conv_in(images)
        for stage in e.down:
            x = stage(x)
            if hasattr(stage, "down_conv"):
                x = stage.down_conv(x)
            elif stage is not e.down[-1]:
                x = F.avg_pool2d(x, 2)
        x = e.mid(x)
        return e.conv_out(F.silu(e.norm_out(x)))

    def quantize_z(self, z):
        """LFQ: sign of every channel (exactly 0 -> -1), straight-through.  -> (z_q [B,C,h,w], indices [B,h,w])."""
        q = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))
        indices = bits_to_index(q.permute(0, 2, 3, 1))                 # [B, C, h, w] -> [B, h, w, C] -> [B, h, w]
        return z + (q - z).detach(), indices

    def encode(self, images):
        """-> (z_quantized [B, C, h, w], min_encoding_indices [B, h, w])."""
        return self.quantize_z(self.encode_z(images))

    def decode(self, z_quantized):
        """Latents [B, C, h, w] (bits, or any continuous values in [-1, 1]) -> images [B, 3, H, W], unclamped."""
        d = self.decoder
        x = d.mid(d.conv_in(z_quantized))
        for stage in d.up:
            x = stage(x)
            if hasattr(stage, "upsample_conv"):
                x = stage.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return d.conv_out(F.silu(d.norm_out(x)))

    def decode_tokens(self, tokens):
        """Flat ids [B, N] (row-major grid) -> images."""
        return self.latents_to_images(index_to_bits(tokens, self.num_bits))

    # --- the uniform interface ------------------------------------------------------------------------------------
    def images_to_indices(self, images):
        return self.encode(images)[1].flatten(1)                       # [B, h, w] -> [B, N]

    def indices_to_images(self, indices):
        return self.decode_tokens(indices)

    def latents_to_images(self, latents):
        b, n, c = latents.shape
        s = math.isqrt(n)
        return self.decode(latents.reshape(b, s, s, c).permute(0, 3, 1, 2).contiguous())  # [B,N,C] -> [B,C,s,s]

    def expected_latents(self, probs):
        """Soft bit latents [B, N, C] in [-1, 1] from per-split probs [B, N, S, V] (see ``expected_bits``)."""
        return expected_bits(probs)

    def lfq_losses(self, z, entropy_positions=None, generator=None):
        """MaskBit's LFQ training terms on z [B, C, h, w]: commitment, and entropy = per-sample entropy minus
        gamma * entropy of the batch mean, of softmax(2 z.c / T) over the 2^C codes c (= -||z - c||^2 / T + const).
        entropy_positions: estimate the entropy terms on that many random positions (a CPU shortcut)."""
        cfg = self.config
        commitment = cfg["commitment_cost"] * ((torch.where(z > 0, 1.0, -1.0) - z) ** 2).mean()
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])            # [B, C, h, w] -> [B*h*w, C]
        if entropy_positions is not None and entropy_positions < flat.shape[0]:
            flat = flat[torch.randperm(flat.shape[0], generator=generator)[:entropy_positions].to(flat.device)]
        affinity = 2 * flat @ self.quantize.codebook.t()                # [P, 2^C]
        p = torch.softmax(affinity / cfg["entropy_loss_temperature"], dim=-1)
        per_sample = -(p * torch.log(p.clamp_min(1e-5))).sum(-1).mean()
        avg = p.mean(0)
        avg_entropy = -(avg * torch.log(avg.clamp_min(1e-5))).sum()
        return commitment, cfg["entropy_loss_weight"] * (per_sample - cfg["entropy_gamma"] * avg_entropy)


# ----------------------------------------------------------------------------------------------------------------
# Taming VQGAN (SPEC section 4): the tokenizer of Di[M]O's MaskGIT teacher.
# ----------------------------------------------------------------------------------------------------------------
class TamingResnetBlock(nn.Module):
    def __init__(self, c_in, c_out, dropout):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in, 1e-6), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = group_norm(c_out, 1e-6), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class TamingAttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions with 1x1 conv projections."""

    def __init__(self, c):
        super().__init__()
        self.norm = group_norm(c, 1e-6)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q = self.q(y).reshape(b, c, h * w).transpose(1, 2)             # [B, C, h, w] -> [B, hw, C]
        k, v = self.k(y).reshape(b, c, h * w), self.v(y).reshape(b, c, h * w)  # [B, C, hw]
        attn = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)        # [B, hw(query), hw(key)]
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)    # [B, C, hw] -> [B, C, h, w]
        return x + self.proj_out(out)


class TamingLevel(nn.Module):
    def __init__(self, c_in, c_out, num_blocks, attention, dropout):
        super().__init__()
        self.block = nn.ModuleList(TamingResnetBlock(c_in if k == 0 else c_out, c_out, dropout)
                                   for k in range(num_blocks))
        self.attn = nn.ModuleList(TamingAttnBlock(c_out) for _ in range(num_blocks if attention else 0))

    def forward(self, x):
        for k, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[k](x)
        return x


class Resample(nn.Module):
    """Downsample: pad right/bottom by 1, 3x3 stride-2 conv.  Upsample: nearest x2, 3x3 conv."""

    def __init__(self, c, down):
        super().__init__()
        self.down, self.conv = down, nn.Conv2d(c, c, 3, stride=2 if down else 1, padding=0 if down else 1)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.down else F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TamingMid(nn.Module):
    def __init__(self, c, dropout):
        super().__init__()
        self.block_1, self.attn_1 = TamingResnetBlock(c, c, dropout), TamingAttnBlock(c)
        self.block_2 = TamingResnetBlock(c, c, dropout)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class VQGAN(nn.Module):
    """taming ``VQModel(ddconfig, n_embed, embed_dim)``; images in [-1, 1] for the official calls."""

    def __init__(self, ddconfig, n_embed, embed_dim, lossconfig=None):
        super().__init__()
        self.config = dict(ddconfig=dict(ddconfig), n_embed=n_embed, embed_dim=embed_dim)
        ch, mult, nrb = ddconfig["ch"], list(ddconfig["ch_mult"]), ddconfig["num_res_blocks"]
        levels, res, attn_res = len(mult), ddconfig["resolution"], set(ddconfig["attn_resolutions"])
        drop, z = ddconfig.get("dropout", 0.0), ddconfig["z_channels"]
        in_mult = [1] + mult
        enc, dec = nn.Module(), nn.Module()
        enc.conv_in = nn.Conv2d(ddconfig["in_channels"], ch, 3, padding=1)
        enc.down = nn.ModuleList(TamingLevel(ch * in_mult[i], ch * mult[i], nrb, res // 2 ** i in attn_res, drop)
                                 for i in range(levels))
        for i in range(levels - 1):
            enc.down[i].downsample = Resample(ch * mult[i], down=True)
        enc.mid = TamingMid(ch * mult[-1], drop)
        enc.norm_out = group_norm(ch * mult[-1], 1e-6)
        enc.conv_out = nn.Conv2d(ch * mult[-1], 2 * z if ddconfig.get("double_z", False) else z, 3, padding=1)
        dec.conv_in = nn.Conv2d(z, ch * mult[-1], 3, padding=1)
        dec.mid = TamingMid(ch * mult[-1], drop)
        # decoder.up.{i} is indexed by level (0 = full resolution) but runs from the deepest level up.
        dec.up = nn.ModuleList(TamingLevel(ch * (mult[i + 1] if i + 1 < levels else mult[-1]), ch * mult[i], nrb + 1,
                                           res // 2 ** i in attn_res, drop) for i in range(levels))
        for i in range(1, levels):
            dec.up[i].upsample = Resample(ch * mult[i], down=False)
        dec.norm_out = group_norm(ch * mult[0], 1e-6)
        dec.conv_out = nn.Conv2d(ch * mult[0], ddconfig["out_ch"], 3, padding=1)
        self.encoder, self.decoder = enc, dec
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(n_embed, embed_dim)
        self.quant_conv, self.post_quant_conv = nn.Conv2d(z, embed_dim, 1), nn.Conv2d(embed_dim, z, 1)
        self.n_embed, self.embed_dim, self.downsample = n_embed, embed_dim, 2 ** (levels - 1)

    # --- official calls (images in [-1, 1]) -----------------------------------------------------------------------
    def pre_quant(self, images):
        e = self.encoder
        x = e.conv_in(images)
        for level in e.down:
            x = level(x)
            if hasattr(level, "downsample"):
                x = level.downsample(x)
        return self.quant_conv(e.conv_out(F.silu(e.norm_out(e.mid(x)))))

    def encode(self, images):
        """-> (quant [B, E, h, w], indices [B, h, w]): nearest code by squared distance, first minimum wins."""
        z = self.pre_quant(images)
        b, e, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, e)                    # [B, E, h, w] -> [B*h*w, E]
        table = self.quantize.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) + table.pow(2).sum(1) - 2 * flat @ table.t()
        indices = d.argmin(1)
        quant = table[indices].reshape(b, h, w, e).permute(0, 3, 1, 2)  # [B*h*w, E] -> [B, E, h, w]
        return z + (quant - z).detach(), indices.reshape(b, h, w)

    def decode(self, quant):
        d = self.decoder
        x = d.mid(d.conv_in(self.post_quant_conv(quant)))
        for level in reversed(d.up):
            x = level(x)
            if hasattr(level, "upsample"):
                x = level.upsample(x)
        return d.conv_out(F.silu(d.norm_out(x)))

    def decode_code(self, code):
        """Codes [B, h, w] -> images in about [-1, 1]."""
        vec = self.quantize.embedding(code)                             # [B, h, w, E]
        return self.decode(vec.permute(0, 3, 1, 2).contiguous())       # -> [B, E, h, w]

    # --- the uniform interface (images in [0, 1]) -----------------------------------------------------------------
    def images_to_indices(self, images):
        return self.encode(images * 2 - 1)[1].flatten(1)               # [B, h, w] -> [B, N]

    def indices_to_images(self, indices):
        """A leftover mask id (= n_embed) decodes as code n_embed-1, as Di[M]O's clamp does."""
        return self.latents_to_images(self.quantize.embedding(indices.clamp(0, self.n_embed - 1)))

    def latents_to_images(self, latents):
        b, n, e = latents.shape
        s = math.isqrt(n)
        return self.decode(latents.reshape(b, s, s, e).permute(0, 3, 1, 2).contiguous()) / 2 + 0.5

    def expected_latents(self, probs):
        """Soft code vectors sum_j p_j e_j [B, N, E]; probability on the mask class goes to code n_embed-1."""
        p = probs[..., 0, :]                                           # [B, N, 1, V] -> [B, N, V] (one split)
        if p.shape[-1] == self.n_embed + 1:
            p = torch.cat([p[..., :-2], p[..., -2:].sum(-1, keepdim=True)], dim=-1)
        return p @ self.quantize.embedding.weight.to(p.dtype)


def build_tokenizer(family, config):
    """'maskbit' -> LFQTokenizer(config dict); 'maskgit' -> VQGAN(**config)."""
    if family == "maskbit":
        return LFQTokenizer(config)
    return VQGAN(**config)


def main(argv):
    """Without arguments, a small CPU demo (training a tokenizer: python train.py tokenizer ...)."""
    if argv:
        raise UserError("tokenizer.py takes no arguments (its demo); training is 'python train.py tokenizer ...'")
    torch.manual_seed(0)
    tok = LFQTokenizer(dict(token_size=10, num_channels=3, hidden_channels=32, channel_mult=[1, 2],
                            num_resolutions=2, num_res_blocks=1, commitment_cost=0.25, entropy_loss_weight=0.02,
                            entropy_loss_temperature=0.01, entropy_gamma=1.0)).eval()
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        idx = tok.images_to_indices(images)
        print("indices", tuple(idx.shape), "round trip bits->ids ok:",
              torch.equal(bits_to_index(index_to_bits(idx, 10)), idx))
        print("decoded", tuple(tok.indices_to_images(idx).shape))


if __name__ == "__main__":
    import sys

    from config import cli
    cli(lambda: main(sys.argv[1:]))
