"""Meissonic's image tokenizer: diffusers' ``VQModel``, a convolutional VQ autoencoder (the aMUSEd VQ-GAN layout).

Loads the released ``vqvae/`` folder with ``strict=True`` and reproduces the official decode and encode
(``tests/golden/SPEC_meissonic.md`` section 2):

* decode (what the Meissonic pipeline and Di[M]O call): ids [B, h, w] -> codebook rows [B, C, h, w]
  (``lookup_from_codebook``) -> ``post_quant_conv`` -> conv decoder (ResNet blocks, nearest x2 up-sampling) ->
  images [B, 3, h f, w f] in [0, 1] (the pipeline clips; no scaling factor, no [-1, 1] normalisation);
* encode (Meissonic's training; data-free Di[M]O does not need it): images in [0, 1] -> encoder (ResNet blocks, a
  stride-2 3x3 conv after right/bottom zero padding) -> ``quant_conv`` -> nearest code in Euclidean distance.

The down-sampling factor f is 2^(levels - 1): 16 for the released five levels (64 x 64 ids -> 1024 px).

Shapes: B batch, h x w token grid, C code width (latent_channels), f down-sampling factor.

Run: ``python vq_model.py`` builds a tiny model and round-trips random images.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCK_TYPES = ("DownEncoderBlock2D", "UpDecoderBlock2D")


class ResnetBlock(nn.Module):
    """y = conv2(SiLU(GN2(conv1(SiLU(GN1(x)))))); out = shortcut(x) + y (a 1x1 conv where widths differ)."""

    def __init__(self, cin, cout, groups):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin, eps=1e-6), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout, eps=1e-6), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.conv_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        y = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return (self.conv_shortcut(x) if hasattr(self, "conv_shortcut") else x) + y


class MidAttention(nn.Module):
    """The optional single-head attention of the middle block (``mid_block_add_attention``; off in the release)."""

    def __init__(self, c, groups):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.to_q, self.to_k, self.to_v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.to_out = nn.ModuleList([nn.Linear(c, c)])

    def forward(self, x):
        b, c, h, w = x.shape
        n = self.group_norm(x).flatten(2).transpose(1, 2)                             # [B, C, h, w] -> [B, hw, C]
        q, k, v = self.to_q(n), self.to_k(n), self.to_v(n)
        a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # one head
        return x + self.to_out[0](a).transpose(1, 2).reshape(b, c, h, w)              # -> [B, C, h, w]


def mid_block(c, groups, attention):
    m = nn.Module()
    m.resnets = nn.ModuleList([ResnetBlock(c, c, groups), ResnetBlock(c, c, groups)])
    if attention:
        m.attentions = nn.ModuleList([MidAttention(c, groups)])
    return m


def run_mid(m, x):
    x = m.resnets[0](x)
    if hasattr(m, "attentions"):
        x = m.attentions[0](x)
    return m.resnets[1](x)


def level(cin, cout, n, groups, resample):
    """One encoder level (``resample`` 'down': n resnets, then a stride-2 conv) or decoder level ('up': n + 1
    resnets, then nearest x2 and a 3x3 conv); None at the last level."""
    m = nn.Module()
    m.resnets = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(n))
    if resample == "down":
        m.downsamplers = nn.ModuleList([nn.Module()])
        m.downsamplers[0].conv = nn.Conv2d(cout, cout, 3, stride=2)
    elif resample == "up":
        m.upsamplers = nn.ModuleList([nn.Module()])
        m.upsamplers[0].conv = nn.Conv2d(cout, cout, 3, padding=1)
    return m


def run_level(m, x):
    for r in m.resnets:
        x = r(x)
    if hasattr(m, "downsamplers"):
        x = m.downsamplers[0].conv(F.pad(x, (0, 1, 0, 1)))                           # right/bottom zero padding
    if hasattr(m, "upsamplers"):
        x = m.upsamplers[0].conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    return x


class VQModel(nn.Module):
    """``diffusers.VQModel(**config)`` for the configs Meissonic uses (group norm, no spatial norm, codebook
    lookup); the config's sample_size, scaling_factor and force_upcast play no role in decode or encode."""

    def __init__(self, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                 up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block=1, act_fn="silu",
                 latent_channels=3, num_vq_embeddings=256, norm_num_groups=32, vq_embed_dim=None,
                 norm_type="group", mid_block_add_attention=True, lookup_from_codebook=False, **unused):
        super().__init__()
        bad = {t for t in (*down_block_types, *up_block_types) if t not in BLOCK_TYPES}
        if bad or act_fn != "silu" or norm_type != "group" or len(down_block_types) != len(block_out_channels):
            raise ValueError(f"VQModel config outside Meissonic's family (block types {sorted(bad)}, act_fn "
                             f"{act_fn}, norm_type {norm_type}, {len(block_out_channels)} widths)")
        ch, g, c, e = list(block_out_channels), norm_num_groups, latent_channels, vq_embed_dim or latent_channels
        self.lookup_from_codebook, self.code_dim = lookup_from_codebook, e
        self.codebook_size, self.factor = num_vq_embeddings, 2 ** (len(ch) - 1)
        self.encoder = nn.Module()
        self.encoder.conv_in = nn.Conv2d(in_channels, ch[0], 3, padding=1)
        self.encoder.down_blocks = nn.ModuleList(
            level(ch[max(i - 1, 0)], ch[i], layers_per_block, g, "down" if i < len(ch) - 1 else None)
            for i in range(len(ch)))
        self.encoder.mid_block = mid_block(ch[-1], g, mid_block_add_attention)
        self.encoder.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=1e-6)
        self.encoder.conv_out = nn.Conv2d(ch[-1], c, 3, padding=1)
        self.quant_conv, self.post_quant_conv = nn.Conv2d(c, e, 1), nn.Conv2d(e, c, 1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(num_vq_embeddings, e)
        rev = ch[::-1]
        self.decoder = nn.Module()
        self.decoder.conv_in = nn.Conv2d(c, ch[-1], 3, padding=1)
        self.decoder.mid_block = mid_block(ch[-1], g, mid_block_add_attention)
        self.decoder.up_blocks = nn.ModuleList(
            level(rev[max(i - 1, 0)], rev[i], layers_per_block + 1, g, "up" if i < len(ch) - 1 else None)
            for i in range(len(ch)))
        self.decoder.conv_norm_out = nn.GroupNorm(g, ch[0], eps=1e-6)
        self.decoder.conv_out = nn.Conv2d(ch[0], out_channels, 3, padding=1)

    def codebook_entries(self, ids):
        """ids [B, h, w] -> codebook rows as a latent map [B, C, h, w] (the decode path's ``quant``)."""
        return self.quantize.embedding(ids).permute(0, 3, 1, 2)                      # [B, h, w, C] -> NCHW

    def decode_latents(self, quant):
        """quant [B, C, h, w] -> raw decoder output [B, 3, h f, w f] (not clipped)."""
        x = self.decoder.conv_in(self.post_quant_conv(quant))
        x = run_mid(self.decoder.mid_block, x)
        for m in self.decoder.up_blocks:
            x = run_level(m, x)
        return self.decoder.conv_out(F.silu(self.decoder.conv_norm_out(x)))

    def decode(self, ids):
        """ids [B, h, w] -> raw images [B, 3, h f, w f]; the pipeline clips them to [0, 1]."""
        return self.decode_latents(self.codebook_entries(ids))

    def encode_latents(self, pixels):
        """Images [B, 3, H, W] in [0, 1] -> ``quant_conv`` output [B, C, H/f, W/f]."""
        x = self.encoder.conv_in(pixels)
        for m in self.encoder.down_blocks:
            x = run_level(m, x)
        x = run_mid(self.encoder.mid_block, x)
        return self.quant_conv(self.encoder.conv_out(F.silu(self.encoder.conv_norm_out(x))))

    def encode(self, pixels):
        """Images in [0, 1] -> (latents [B, C, h, w], ids [B, h, w] of the nearest code in Euclidean distance)."""
        z = self.encode_latents(pixels)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])                          # [B, C, h, w] -> [Bhw, C]
        ids = torch.cdist(flat, self.quantize.embedding.weight).argmin(-1)
        return z, ids.reshape(z.shape[0], *z.shape[2:])                               # [Bhw] -> [B, h, w]

    # -- the tokenizer interface of teacher.py --------------------------------------------------------------
    def indices_to_images(self, ids):
        """ids [B, h, w] (or flat [B, h*w] of a square grid) -> images [B, 3, h f, w f] clipped to [0, 1]."""
        if ids.dim() == 2:
            side = int(round(ids.shape[1] ** 0.5))
            ids = ids.reshape(ids.shape[0], side, side)                             # [B, N] -> [B, h, w]
        return self.decode(ids).clamp(0, 1)


if __name__ == "__main__":
    torch.manual_seed(0)
    vq = VQModel(block_out_channels=[16, 32, 32], down_block_types=["DownEncoderBlock2D"] * 3,
                 up_block_types=["UpDecoderBlock2D"] * 3, latent_channels=8, num_vq_embeddings=64, norm_num_groups=8,
                 mid_block_add_attention=False, lookup_from_codebook=True).eval()
    with torch.no_grad():
        z, ids = vq.encode(torch.rand(2, 3, 32, 32))
        print("latents", tuple(z.shape), "ids", tuple(ids.shape), "images", tuple(vq.decode(ids).shape))
