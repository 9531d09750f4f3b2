"""TA-TiTok, VQ variant (``TATiTok`` of bytedance/1d-tokenizer): MaskGen's image tokenizer, an image as a
one-dimensional sequence of N ids (128 released), not a grid.

Loads the released ``tokenizer_tatitok_bl128_vq`` weights with ``strict=True`` and reproduces the official encode,
quantise and decode (``tests/golden/SPEC_maskgen.md`` section 3):

* encode: image [B, 3, S, S] in [0, 1] (no mean/std) --patch conv--> [CLS ; patches] + positions, then N learned
  latent tokens + their positions --ViT--> the last N rows --ln_post, 1x1 conv--> z [B, C, 1, N];
* quantise (float32): the nearest codebook row in squared Euclidean distance, first minimum; ids [B, 1, N];
* decode: codes [B, C, 1, N] + CLIP's *final-layer* text states [B, Lt, T] --> [CLS ; a shared mask query per
  patch slot] + positions, then the latents + positions, then the projected text + text positions --ViT--> the
  patch slots --ln_post, 1x1 conv to pd*pd*3 channels, depth-to-space, 3x3 conv--> image (unclamped; callers clamp).

Only the decoder reads the text.  ``expected_latents`` is the soft path Soft-Di[M]O needs: a distribution over the
codebook gives the expected code vector (the official ``get_codebook_entry`` accepts such a weight matrix too).

The ViT blocks are the CLIP form (pre-LN, packed q/k/v, exact GELU, no mask); the official code runs them
sequence-first, which does not change the math.  Model sizes come from the official table by name
(``SIZES``); the golden fixtures' ``vit_*_size_override`` keys (not in the official config) set them directly.

Shapes: B batch, S image side, pe / pd encoder / decoder patch, g grid side (S / patch), N latent tokens, W width,
C code width (token_size), K codebook size, Lt text tokens (77), T text width (768).

Run: ``python tatitok.py`` round-trips random images through a tiny model and counts the released bl128.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoints import load_folder
from config import UserError

SIZES = {"small": (512, 8, 8), "base": (768, 12, 12), "large": (1024, 24, 16)}   # width, layers, heads


class ViTBlock(nn.Module):
    """``ResidualAttentionBlock``: x + MHA(LN1 x), then x + c_proj(GELU(c_fc(LN2 x))); LayerNorm eps 1e-5."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.Module()
        self.attn.in_proj_weight = nn.Parameter(torch.zeros(3 * width, width))
        self.attn.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.attn.out_proj = nn.Linear(width, width)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        qkv = F.linear(self.ln_1(x), self.attn.in_proj_weight, self.attn.in_proj_bias)       # [B, S, 3W]
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in qkv.chunk(3, -1))  # [B, h, S, W/h]
        x = x + self.attn.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class ViT(nn.Module):
    """The parts both towers share: CLS, a positional table over [CLS ; g^2 patches], latent positions, ln_pre,
    the blocks, ln_post."""

    def __init__(self, width, layers, heads, grid, n_latent):
        super().__init__()
        self.grid = grid
        self.class_embedding = nn.Parameter(torch.zeros(1, width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.latent_token_positional_embedding = nn.Parameter(torch.zeros(n_latent, width))
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.transformer = nn.ModuleList(ViTBlock(width, heads) for _ in range(layers))

    def run(self, x):
        x = self.ln_pre(x)
        for block in self.transformer:
            x = block(x)
        return x


class Encoder(ViT):
    def __init__(self, width, layers, heads, grid, n_latent, patch, token_size):
        super().__init__(width, layers, heads, grid, n_latent)
        self.patch_embed = nn.Conv2d(3, width, patch, stride=patch)
        self.conv_out = nn.Conv2d(width, token_size, 1)

    def forward(self, images, latent_tokens):
        b = len(images)
        p = self.patch_embed(images).flatten(2).transpose(1, 2)                    # [B, W, g, g] -> [B, g^2, W]
        x = torch.cat([self.class_embedding.expand(b, 1, -1), p], 1) + self.positional_embedding
        lat = (latent_tokens + self.latent_token_positional_embedding).expand(b, -1, -1)      # [B, N, W]
        x = self.run(torch.cat([x, lat], 1))[:, 1 + self.grid ** 2:]                  # the last N rows
        z = self.conv_out(self.ln_post(x).transpose(1, 2)[..., None])                 # [B, N, W] -> [B, C, N, 1]
        return z.transpose(2, 3)                                                      # -> [B, C, 1, N]


class Decoder(ViT):
    def __init__(self, width, layers, heads, grid, n_latent, patch, token_size, text_length, text_dim):
        super().__init__(width, layers, heads, grid, n_latent)
        self.patch = patch
        self.decoder_embed = nn.Linear(token_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.text_guidance_proj = nn.Linear(text_dim, width)
        self.text_guidance_positional_embedding = nn.Parameter(torch.zeros(text_length, width))
        self.ffn = nn.ModuleList([nn.Conv2d(width, patch * patch * 3, 1)])
        self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, z, text_guidance):
        b, g = len(z), self.grid
        want = (len(self.text_guidance_positional_embedding), self.text_guidance_proj.in_features)   # (Lt, T)
        if tuple(text_guidance.shape[1:]) != want:
            raise UserError(f"TA-TiTok text guidance {tuple(text_guidance.shape)}: expected [B, {want[0]}, {want[1]}] "
                            f"(CLIP's final-layer states, every position)")
        lat = self.decoder_embed(z.flatten(1, 2).transpose(1, 2))                     # [B, C, 1, N] -> [B, N, W]
        lat = lat + self.latent_token_positional_embedding[:lat.shape[1]]
        slots = torch.cat([self.class_embedding.expand(b, 1, -1), self.mask_token.expand(b, g * g, -1)], 1)
        txt = self.text_guidance_proj(text_guidance) + self.text_guidance_positional_embedding
        x = self.run(torch.cat([slots + self.positional_embedding, lat, txt], 1))[:, 1:1 + g * g]
        x = self.ln_post(x).transpose(1, 2).unflatten(2, (g, g))                      # [B, g^2, W] -> [B, W, g, g]
        x = F.pixel_shuffle(self.channels_rgb_last(self.ffn[0](x)), self.patch)      # -> [B, 3, S, S]
        return self.conv_out(x)

    def channels_rgb_last(self, x):
        """The official depth-to-space reads channel (p1 pd + p2) 3 + rgb; pixel_shuffle reads rgb pd^2 + p1 pd + p2:
        reorder [B, pd^2 * 3, g, g] to the latter."""
        return x.unflatten(1, (self.patch * self.patch, 3)).transpose(1, 2).flatten(1, 2)  # via [B, 3, pd^2, g, g]


class TATiTok(nn.Module):
    """``TATiTok(config)`` for ``quantize_mode vq``: ``encode``, ``quantize``, ``decode_tokens``, ``forward``."""

    reads_text = True                                         # its decoder reads the prompt (teacher.tokens_to_images)

    def __init__(self, crop_size=256, enc=SIZES["base"], dec=SIZES["large"], enc_patch=16, dec_patch=16,
                 num_latent_tokens=128, token_size=64, codebook_size=8192, text_context_length=77,
                 text_embed_dim=768, use_l2_norm=False, clustering_vq=False):
        super().__init__()
        self.num_latent_tokens, self.codebook_size = num_latent_tokens, codebook_size
        self.latent_tokens = nn.Parameter(torch.zeros(num_latent_tokens, enc[0]))
        self.encoder = Encoder(*enc, crop_size // enc_patch, num_latent_tokens, enc_patch, token_size)
        self.decoder = Decoder(*dec, crop_size // dec_patch, num_latent_tokens, dec_patch, token_size,
                               text_context_length, text_embed_dim)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(codebook_size, token_size)
        self.use_l2_norm = use_l2_norm
        if clustering_vq:                                   # training-time code usage, stored with the weights
            self.quantize.register_buffer("embed_prob", torch.zeros(codebook_size))

    @classmethod
    def from_config(cls, config):
        """The official config dict (``model.vq_model``, ``dataset.preprocessing.crop_size``)."""
        vq = config["model"]["vq_model"]
        bad = {k: vq.get(k) for k, ok in (("quantize_mode", "vq"), ("is_legacy", False), ("finetune_decoder", False))
               if vq.get(k, ok) != ok}
        if bad:
            raise UserError(f"TA-TiTok config {bad}: only the released VQ form is built here (quantize_mode vq, "
                            f"is_legacy and finetune_decoder False)")

        def size(which):
            override = vq.get(f"vit_{which}_size_override")
            if override:
                return override["width"], override["num_layers"], override["num_heads"]
            return SIZES[vq[f"vit_{which}_model_size"]]
        return cls(crop_size=config["dataset"]["preprocessing"]["crop_size"], enc=size("enc"), dec=size("dec"),
                   enc_patch=vq["vit_enc_patch_size"], dec_patch=vq["vit_dec_patch_size"],
                   num_latent_tokens=vq["num_latent_tokens"], token_size=vq["token_size"],
                   codebook_size=vq["codebook_size"], text_context_length=vq.get("text_context_length", 77),
                   text_embed_dim=vq.get("text_embed_dim", 768), use_l2_norm=vq.get("use_l2_norm", False),
                   clustering_vq=vq.get("clustering_vq", False))

    def quantize_latents(self, z):
        """z [B, C, 1, N] -> (z + (e_id - z) in float32 [B, C, 1, N], ids [B, 1, N]): the nearest code, first minimum,
        by |z|^2 + |e|^2 - 2 z.e as the official quantiser computes it (use_l2_norm: z and the codes unit-normed
        first, and the output built from both normed)."""
        z = z.float().permute(0, 2, 3, 1)                                              # [B, C, 1, N] -> [B, 1, N, C]
        flat, e = z.reshape(-1, z.shape[-1]), self.quantize.embedding.weight.float()
        if self.use_l2_norm:
            flat, e, z = F.normalize(flat, dim=-1), F.normalize(e, dim=-1), F.normalize(z, dim=-1)
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.T       # [B N, K]
        ids = d.argmin(1)
        zq = e[ids].reshape(z.shape)                                                   # [B N, C] -> [B, 1, N, C]
        return (z + (zq - z)).permute(0, 3, 1, 2), ids.reshape(z.shape[:3])          # -> [B, C, 1, N], [B, 1, N]

    def encode_latents(self, images):
        return self.encoder(images, self.latent_tokens)

    def encode(self, images):
        """images [B, 3, S, S] in [0, 1] -> (z_q [B, C, 1, N], ids [B, 1, N])."""
        return self.quantize_latents(self.encode_latents(images))

    def code_vectors(self, e):
        """[B, N, C] looked-up or expected codes -> the decoder's input [B, C, 1, N] (unit-normed with use_l2_norm, as
        the official ``get_codebook_entry`` returns them)."""
        return (F.normalize(e, dim=-1) if self.use_l2_norm else e).transpose(1, 2)[:, :, None]

    def codes(self, ids):
        """ids [B, N] -> code vectors [B, C, 1, N]."""
        return self.code_vectors(self.quantize.embedding(ids))

    def expected_latents(self, probs):
        """probs [B, N, K] over the codebook -> the expected code vector E^T p [B, C, 1, N] (Soft-Di[M]O's Emb_Dec; the
        official class takes such a weight matrix too)."""
        return self.code_vectors(probs @ self.quantize.embedding.weight)

    def decode(self, z, text_guidance):
        return self.decoder(z, text_guidance)

    def decode_tokens(self, ids, text_guidance):
        """ids [B, N] (or [B, 1, N]) + final-layer CLIP states [B, Lt, T] -> images [B, 3, S, S], unclamped."""
        return self.decode(self.codes(ids.reshape(len(ids), -1)), text_guidance)

    def forward(self, images, text_guidance):
        z_q, _ = self.encode(images)
        return self.decode(z_q, text_guidance)


def load_tatitok(folder):
    """A released ``tokenizer_tatitok_*_vq`` folder (config.json: the official nested config; model.safetensors or
    pytorch_model.bin), strictly."""
    def build(c):
        if "vq_model" not in c.get("model", {}) or "crop_size" not in c.get("dataset", {}).get("preprocessing", {}):
            raise UserError(f"'{folder}/config.json' is not a TA-TiTok config (no model.vq_model / dataset."
                            f"preprocessing.crop_size): another family?")
        return TATiTok.from_config(c)
    return load_folder(folder, "TA-TiTok tokenizer", build)[0]


def bl128():
    """The released ``tokenizer_tatitok_bl128_vq`` (configs/infer/TA-TiTok/tatitok_bl128_vq.yaml)."""
    return TATiTok()


if __name__ == "__main__":
    torch.manual_seed(0)
    tiny = TATiTok(crop_size=32, enc=(32, 2, 4), dec=(48, 2, 4), enc_patch=8, dec_patch=8, num_latent_tokens=8,
                   token_size=8, codebook_size=64, text_context_length=8, text_embed_dim=32).eval()
    images = torch.rand(2, 3, 32, 32)
    z_q, ids = tiny.encode(images)
    print("tiny TA-TiTok: ids", tuple(ids.shape), "images", tuple(tiny(images, torch.randn(2, 8, 32)).shape))
    with torch.device("meta"):
        model = bl128()
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6                     # noqa: E731
    print(f"bl128: {count(model):.1f} M parameters (encoder {count(model.encoder):.1f} M, decoder "
          f"{count(model.decoder):.1f} M)")
