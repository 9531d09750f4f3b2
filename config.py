"""The tiny shared config: model presets, the device block and one-line CLI errors.

Everything another file needs to agree on lives here, and nothing else:

* ``PRESETS``: one small dict per model family member (architecture of the generator and tokenizer, the teacher
  sampler's defaults, Di[M]O's distillation defaults, and where the released weights come from).  Values are the
  official constructor arguments, so a preset can be read side by side with the official yaml files.
* ``runtime(...)``: the one visible device / dtype / autocast / compile block every script uses.
* ``UserError`` / ``ArgumentParser`` / ``cli``: bad input ends a script with one line on stderr and exit code 2,
  never a traceback.

Guidance convention (stated once, used everywhere): CFG logits are ``z = z_u + w * (z_c - z_u)`` with ``w = 1``
meaning "no guidance" (the form of Di[M]O's loss).  MaskBit's configs and Halton-MaskGIT's sampler write
``z_c + s * (z_c - z_u)``, i.e. ``w = s + 1``; the presets below store ``w`` converted with ``maskbit_scale_to_w``.

Run ``python config.py`` to list the presets.
"""
import argparse
import contextlib
import os
import sys
from types import SimpleNamespace

import torch


ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


def maskbit_scale_to_w(s):
    """MaskBit's guidance scale s (``cond + s*(cond-uncond)``) in our convention ``uncond + w*(cond-uncond)``.
    Halton-MaskGIT's ``cfg_w`` has the same form, so it converts the same way."""
    return s + 1.0


# ----------------------------------------------------------------------------------------------------------------
# Presets.  'generator' = LFQBert / MaskTransformer kwargs, 'tokenizer' = VQGAN+ (LFQ) config or taming kwargs.
# ----------------------------------------------------------------------------------------------------------------
# Generator inference temperatures (logits / T) tried before the final evaluation.  Di[M]O's sweep on MaskGIT
# (2 ... 11) found the FID minimum near 7; 1 is the training temperature.
RELEASED_TEMPS = "1,2,3,4,5,6,7,8,9"


# Di[M]O's distillation recipe for a released teacher (the official MaskGIT config and launch: generator and
# auxiliary lr 1e-5 / 1e-5, batch 64 per GPU, about 30k iterations, the code's 'sum' normalisation, auxiliary label
# smoothing 0.1, r_init 0.6, sigma_init 0.1, teacher CFG 2 in our w form).  Soft-Di[M]O does not publish its MaskBit
# distillation settings, so the MaskBit presets use the same values.
DISTILL_RELEASED = dict(steps=30000, batch_size=64, lr=1e-5, lr_aux=1e-5, normalisation="sum", label_smoothing=0.1,
                        r_init=0.6, sigma_init=0.1, teacher_cfg=2.0, gen_temperature=1.0, aux_updates=1,
                        lr_decay=0.0, tune_temperature=RELEASED_TEMPS)

# Soft-Di[M]O (soft_refine.py) on a released teacher: the paper's longer MaskBit run (lr 5e-7, w_GAN 200, AdamW
# weight decay 0.01), the only published recipe; the discriminator's lr and the step count are ours.
SOFT_RELEASED = dict(steps=10000, lr=5e-7, lr_aux=None, lr_d=2e-6, w_gan=200.0, weight_decay=0.01, d_warmup=500,
                     soft_temperature=1.0, lr_decay=0.0)


def _maskbit(bits, steps, s, rand_temp, scale_pow):
    return dict(
        family="maskbit",
        generator=dict(img_size=256, input_stride=16, hidden_dim=1024, codebook_size=2 ** bits, codebook_splits=2,
                       depth=24, heads=16, mlp_dim=4096, dropout=0.1, nclass=1000, use_prenorm=False),
        tokenizer=dict(model_class="vqgan+", quantizer_type="lookup-free", codebook_size=2 ** bits, token_size=bits,
                       commitment_cost=0.25, entropy_loss_weight=0.02, entropy_loss_temperature=0.01,
                       entropy_gamma=1.0, num_channels=3, hidden_channels=128, channel_mult=[1, 1, 2, 2, 4],
                       num_resolutions=5, num_res_blocks=2, sample_with_conv=True),
        sampler=dict(steps=steps, schedule="arccos", temperature=1.0, randomize_temperature=rand_temp,
                     remask="confidence", guidance=maskbit_scale_to_w(s), guidance_anneal="cosine",
                     scale_pow=scale_pow, step_counts="maskbit", noise_anneal="maskbit"),
        distill=DISTILL_RELEASED,
        soft=SOFT_RELEASED,
        released=dict(generator=f"markweber/maskbit_generator_{bits}bit (pytorch_model.bin)",
                      tokenizer=f"markweber/maskbit_tokenizer_{bits}bit (pytorch_model.bin)"),
    )


PRESETS = {
    # Released MaskBit pairs (configs/generator/maskbit_generator_*.yaml; guidance converted to w = s + 1).
    "maskbit-10bit": _maskbit(10, 64, 6.4, 10.5, 2.5),
    "maskbit-12bit": _maskbit(12, 64, 7.1, 8.2, 3.0),
    "maskbit-14bit": _maskbit(14, 64, 7.1, 7.8, 3.0),
    "maskbit-16bit": _maskbit(16, 64, 6.5, 7.5, 2.5),
    "maskbit-18bit": _maskbit(18, 64, 5.7, 8.5, 2.5),
    # Di[M]O's MaskGIT: Halton-MaskGIT v1.0 "Small" + taming f16 VQGAN with 1024 codes.
    "maskgit": dict(
        family="maskgit",
        generator=dict(img_size=256, hidden_dim=768, codebook_size=1024, depth=24, heads=16, mlp_dim=3072,
                       dropout=0.1, nclass=1000),
        tokenizer=dict(ddconfig=dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
                                     ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0),
                       n_embed=1024, embed_dim=256),
        # Di[M]O's teacher baseline is Halton-MaskGIT v1.0's sampler (vendored in Di[M]O: MaskGit_src/Trainer/vit.py,
        # 'adap_sche' + 'sample'), so: its per-step counts and Gumbel annealing ('halton'), its linear CFG annealing
        # w * i/(T-1).  Values: configs/DIMO_MaskGit.yaml 'sampling' (sched_mode arccos, cfg_w 3, r_temp 4.5,
        # sm_temp 1), the same as Halton-MaskGIT v1.0's README table for 256 px (randomize "linear"); cfg_w 3 is in
        # the cond + s (cond - uncond) form, so w = 4 here; sm_temp 1 = temperature 1.  Steps: 16, Di[M]O's Table 1
        # teacher (FID 6.60; the yaml's sampling_step 12 is its training-time preview, v1.0's README used 8).
        sampler=dict(steps=16, schedule="arccos", temperature=1.0, randomize_temperature=4.5, remask="confidence",
                     guidance=maskbit_scale_to_w(3.0), guidance_anneal="linear", scale_pow=1.0, step_counts="halton",
                     noise_anneal="halton"),
        distill=DISTILL_RELEASED,
        soft=SOFT_RELEASED,
        released=dict(generator="llvictorll/Maskgit-pytorch: pretrained_maskgit/MaskGIT/MaskGIT_ImageNet_256.pth",
                      tokenizer="llvictorll/Maskgit-pytorch: pretrained_maskgit/VQGAN/last.ckpt (+ model.yaml)"),
    ),
}
# The embedded default: MaskBit's 12-bit architecture in miniature (32x32 images, 8x8 tokens, 2 splits of 6 bits),
# trained by train.py on the toy shapes; the weights ship in assets/ (docs/toy_world.md: the commands that made
# them).
PRESETS["maskbit-toy"] = dict(
    family="maskbit",
    generator=dict(img_size=32, input_stride=4, hidden_dim=128, codebook_size=4096, codebook_splits=2, depth=4,
                   heads=4, mlp_dim=512, dropout=0.0, nclass=10, use_prenorm=False),
    tokenizer=dict(model_class="vqgan+", quantizer_type="lookup-free", codebook_size=4096, token_size=12,
                   commitment_cost=0.25, entropy_loss_weight=0.02, entropy_loss_temperature=0.01, entropy_gamma=1.0,
                   num_channels=3, hidden_channels=32, channel_mult=[1, 1, 2], num_resolutions=3, num_res_blocks=1,
                   sample_with_conv=True),
    sampler=dict(steps=16, schedule="arccos", temperature=0.9, randomize_temperature=2.0, remask="confidence",
                 guidance=3.0, guidance_anneal="cosine", scale_pow=3.0, step_counts="maskbit", noise_anneal="maskbit"),
    # measured here (docs/dimo.md): the generator's lr 3e-4 decayed linearly to 0 over the run beat 2e-4 constant
    # (the best of 7 constant settings) on the mean of 3 seeds at the same 1400 steps; fewer steps cost FID;
    # temperatures <= 0.3.  Issue 26 (docs/soft_dimo.md): the on-policy draws at tau 0.2 (the paper's is 1), so
    # that sampling at temperature 0.1-0.2 reads the distribution matched to the teacher at 0.5-1 rather than
    # sharpened further (more recall than tau 0.5; at the same FID on seed 0 only); training at input
    # perturbation 0.06 (not the paper's 0.1), near where the generator is then sampled; an inference sigma aimed
    # at the teacher's recall - 0.02
    distill=dict(steps=1400, batch_size=32, lr=3e-4, lr_aux=2e-3, normalisation="sum", label_smoothing=0.1,
                 r_init=0.6, sigma_init=0.06, teacher_cfg=2.0, gen_temperature=1.0, aux_updates=1, lr_decay=1.0,
                 train_temperature=0.2, tune_temperature="0.1,0.2,0.3", tune_sigma="0.04,0.08", recall_margin=0.02),
    # soft_refine.py, measured here (docs/soft_dimo.md): the GAN judges softmax(z / 0.2), and a GAN-refined
    # generator samples best at 0.05-0.3, hence its own grid; the lr decays to 0 over the stage, like the Di[M]O
    # run's: scored on 8 fresh draws, a constant lr beat the start on 1 seed of 3, the decaying one on all 3 (FID
    # -0.12 to -0.17), and on 4 of 5 counting two more Di[M]O starts
    # and the stage trains the generator at input perturbation 0.06, near where it is then sampled, not the paper's
    # 0.1 (issue 26: from a Di[M]O run at 0.1, seed 1 at equal recall, FID 0.25 lower; much of it without the GAN)
    soft=dict(steps=400, lr=1e-4, lr_aux=None, lr_d=1e-3, w_gan=10.0, weight_decay=0.0, d_warmup=300,
              soft_temperature=0.2, lr_decay=1.0, tune_temperature="0.1,0.2,0.3", sigma_init=0.06,
              tune_sigma="0.04,0.08"),
    bundled=dict(teacher=os.path.join(ASSETS, "maskbit_toy_teacher.pt"),
                 tokenizer=os.path.join(ASSETS, "maskbit_toy_tokenizer.pt")),
    released=dict(generator="(bundled) assets/maskbit_toy_teacher.pt",
                  tokenizer="(bundled) assets/maskbit_toy_tokenizer.pt"),
)
PRESETS["maskbit"] = PRESETS["maskbit-12bit"]  # the default released pair (docs/released.md: which MaskBit and why)

# Meissonic (MeissonFlow/Meissonic; facts: tests/golden/SPEC_meissonic.md).  Architecture: the official from-scratch
# constructor (its train/train_meissonic.py), 1,006,946,304 parameters; VQ: the aMUSEd config, inferred (the hub's
# vqvae/config.json was not readable here; a released folder's own config.json is what loads).  Text: OpenCLIP
# ViT-H/14's text tower (open_clip's ViT-H-14.json).  Sampler: the pipeline's defaults (48 steps, CFG 9, Gumbel
# temperature linspace(2, 0, steps), cosine schedule, micro-conditions (width, height, 0, 0, 6) at 1024 px,
# timestep = the step counter N-1-i) with inference.py's negative prompt as the unconditional branch (the
# pipeline's own default is the empty string; inference.py also uses 64 steps).
# Distillation: Di[M]O's configs/DIMO_Meissonic.yaml and launch script (r_init 0.5, sigma_init 0.3 on the embedding
# output, teacher CFG 4 with the negative prompt, FKL, Adam lr 1e-6 for both, 20k steps, batch 2 x 8 accumulation
# per GPU, label smoothing 0.1, timestep 0 for every network).
MEISSONIC_NEGATIVE = ("worst quality, low quality, low res, blurry, distortion, watermark, logo, signature, text, "
                      "jpeg artifacts, signature, sketch, duplicate, ugly, identifying mark")
PRESETS["meissonic"] = dict(
    family="meissonic",
    generator=dict(num_layers=14, num_single_layers=28, attention_head_dim=128, num_attention_heads=8,
                   joint_attention_dim=1024, pooled_projection_dim=1024, axes_dims_rope=[16, 56, 56],
                   vocab_size=8256, codebook_size=8192, downsample=True, upsample=True),
    tokenizer=dict(block_out_channels=[128, 256, 256, 512, 768], down_block_types=["DownEncoderBlock2D"] * 5,
                   up_block_types=["UpDecoderBlock2D"] * 5, layers_per_block=2, latent_channels=64,
                   num_vq_embeddings=8192, norm_num_groups=32, mid_block_add_attention=False,
                   lookup_from_codebook=True),
    text_encoder=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                      num_attention_heads=16, projection_dim=1024, max_position_embeddings=77, hidden_act="gelu",
                      layer_norm_eps=1e-5),
    sampler=dict(steps=48, schedule="cosine", temperature=1.0, randomize_temperature=2.0, remask="confidence",
                 guidance=9.0, guidance_anneal="none", scale_pow=1.0, step_counts="maskbit", noise_anneal="halton"),
    prompt=dict(negative_prompt=MEISSONIC_NEGATIVE, resolution=1024, aesthetic=6.0, timestep="counter"),
    distill=dict(steps=20000, batch_size=16, lr=1e-6, lr_aux=1e-6, normalisation="sum", label_smoothing=0.1,
                 r_init=0.5, sigma_init=0.3, teacher_cfg=4.0, gen_temperature=1.0, aux_updates=1, lr_decay=0.0,
                 negative_prompt=MEISSONIC_NEGATIVE, timestep="zero", schedule="cosine"),
    released=dict(generator="MeissonFlow/Meissonic (the whole folder: transformer/, vqvae/, text_encoder/, "
                            "tokenizer/)", tokenizer="(inside the same folder: vqvae/)"),
)

# MaskGen-VQ (bytedance/1d-tokenizer, Soft-Di[M]O's text-to-image teacher; facts: tests/golden/SPEC_maskgen.md).
# Architecture: configs/infer/MaskGen/maskgen_vq_{l,xl}.yaml (L: width 1024, depth 16; XL: 1280, 20; 16 heads;
# 604.3 M / 1176.6 M parameters), tokenizer TA-TiTok bl128 VQ (tatitok_bl128_vq.yaml: ViT-B encoder, ViT-L decoder,
# 128 tokens of 64-d codes, 8192 codes; 391.0 M), text: open_clip ViT-L-14-336's text tower (123.7 M).  Sampler:
# MaskGen_VQ.generate as the README calls it (16 steps, arccos, guidance scale 12 rising on a cosine from the
# empty prompt, Gumbel 2 (1 - r), tempered logits as confidence, aesthetic score 6.5).  Ours: QuickGELU in the text
# tower (OpenAI's own activation; the release does not record which open_clip version, hence which activation,
# trained it: quick_gelu=False is the other, text_encoder.open_clip_config).
MASKGEN_TEXT = dict(embed_dim=768, quick_gelu=True,
                    text_cfg=dict(context_length=77, vocab_size=49408, width=768, heads=12, layers=12))
MASKGEN_SAMPLER = dict(steps=16, schedule="arccos", temperature=1.0, randomize_temperature=2.0, remask="confidence",
                       guidance=13.0, guidance_anneal="maskgen", scale_pow=1.0, step_counts="maskbit",
                       noise_anneal="maskbit", draw="gumbel-max")
for _name, _hub, _size in (("maskgen", "l", dict(decoder_embed_dim=1024, decoder_depth=16)),
                           ("maskgen-xl", "xl", dict(decoder_embed_dim=1280, decoder_depth=20))):
    PRESETS[_name] = dict(
        family="maskgen",
        generator=dict(codebook_size=8192, num_latent_tokens=128, text_embed_dim=768, decoder_num_heads=16,
                       micro_condition=True, micro_condition_embed_dim=256, condition_num_classes=1000,
                       sample_aesthetic_score=6.5, **_size),
        tokenizer=dict(crop_size=256, enc=(768, 12, 12), dec=(1024, 24, 16), enc_patch=16, dec_patch=16,
                       num_latent_tokens=128, token_size=64, codebook_size=8192, text_context_length=77,
                       text_embed_dim=768),
        text_encoder=MASKGEN_TEXT,
        sampler=MASKGEN_SAMPLER,
        prompt=dict(negative_prompt="", resolution=256, aesthetic=6.5),
        released=dict(generator=f"turkeyju/generator_maskgen_vq_{_hub}",
                      tokenizer="turkeyju/tokenizer_tatitok_bl128_vq"),
    )

# The embedded text-to-image default: Meissonic's classes in miniature on the toy scenes (scenes.py; 48 x 48 pixels,
# a 12 x 12 token grid, 6 x 6 inside the transformer after its 2 x 2 down-sampling), trained by train.py (vq, text,
# t2i) and shipped as a released-layout folder in assets/ (docs/text_to_image.md: the commands, times, choices).
# Ours, not Meissonic's: the timestep is 0 in training and sampling (Di[M]O's convention; Meissonic trains on the
# mask ratio and samples with the step counter, two different scales), the negative prompt is the empty one (the
# caption-dropout branch), 16 steps by default, CFG w = 2 (the best of 1, 1.5, 2, 2.5, 3, 5, 8 on GenEval-toy at seed 1,
# one sample a prompt, apart from the table's seed 0).  The distillation guides the toy teacher at the same w = 2 (the
# paper's 4 is Meissonic's; the toy teacher reads 0.71 at w = 3 and 0.47 at 5 against 0.82 at 2, docs/text_to_image.md).
PRESETS["meissonic-toy"] = dict(
    family="meissonic",
    generator=dict(num_layers=1, num_single_layers=3, attention_head_dim=32, num_attention_heads=4,
                   joint_attention_dim=128, pooled_projection_dim=128, axes_dims_rope=[8, 12, 12], vocab_size=257,
                   codebook_size=256, downsample=True, upsample=True),
    tokenizer=dict(block_out_channels=[16, 32, 64], down_block_types=["DownEncoderBlock2D"] * 3,
                   up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=1, latent_channels=16,
                   num_vq_embeddings=256, norm_num_groups=8, mid_block_add_attention=False,
                   lookup_from_codebook=True),
    text_encoder=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                      projection_dim=128, max_position_embeddings=32, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    sampler=dict(steps=16, schedule="cosine", temperature=1.0, randomize_temperature=2.0, remask="confidence",
                 guidance=2.0, guidance_anneal="none", scale_pow=1.0, step_counts="maskbit", noise_anneal="halton"),
    prompt=dict(negative_prompt="", resolution=48, aesthetic=6.0, timestep="zero"),
    distill=dict(steps=1000, batch_size=32, lr=3e-4, lr_aux=2e-3, normalisation="sum", label_smoothing=0.1,
                 r_init=0.5, sigma_init=0.3, teacher_cfg=2.0, gen_temperature=1.0, aux_updates=1, lr_decay=1.0,
                 negative_prompt="", schedule="cosine", tune_temperature="0.5,1.0"),
    bundled=dict(folder=os.path.join(ASSETS, "meissonic_toy")),
    released=dict(generator="(bundled) assets/meissonic_toy/", tokenizer="(bundled) assets/meissonic_toy/vqvae/"),
)


def get_preset(name):
    if name not in PRESETS:
        raise UserError(f"unknown teacher preset '{name}'; choose one of: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


# ----------------------------------------------------------------------------------------------------------------
# Device, dtype, autocast, compile: decided here, in one visible block, CPU first.
# ----------------------------------------------------------------------------------------------------------------
def cpu_has_bf16():
    """Whether ATen's CPU kernels run bf16 natively here (AVX512-BF16 or AMX), rather than emulating it."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512") and (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def runtime(device="auto", amp=False, compile=False):
    """Pick the device and say how the hot path runs.  Trainable weights always stay float32.

    amp: bf16 autocast.  On CUDA that is the paper's mixed precision.  On CPU only when asked for: it pays on CPUs
    with bf16 matrix units (AMX; there the attention core stays float32, bert.SelfAttention says why) and is
    several times slower where bf16 is emulated (AVX2-only CPUs); docs/speed.md.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for CUDA, but torch.cuda.is_available() is False; use --device cpu")
    dev = torch.device(device)
    if amp and dev.type == "cpu" and not cpu_has_bf16():
        print("note: --amp on this CPU emulates bf16 (no AVX512-BF16 or AMX kernels); a Di[M]O step ran 11x slower "
              "than float32 that way (docs/speed.md): drop --amp", file=sys.stderr)
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    maybe_compile = (lambda fn: torch.compile(fn)) if compile else (lambda fn: fn)
    return SimpleNamespace(device=dev, amp=amp, autocast=autocast, compile=maybe_compile)


# ----------------------------------------------------------------------------------------------------------------
# One-line errors for user mistakes.
# ----------------------------------------------------------------------------------------------------------------
class UserError(Exception):
    """A mistake in the input (flag, file, data): reported as one line, exit code 2, no traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but an error is one line ('error: ...') instead of usage + message."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see --help)")


def cli(main):
    """Run main(); a UserError becomes 'error: <message>' on stderr and exit code 2."""
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def check_range(name, value, low=None, high=None, low_open=False, high_open=False):
    """Raise a UserError unless low <= value <= high (with open ends where asked); return value."""
    bad = (low is not None and (value < low or (low_open and value == low))) or \
          (high is not None and (value > high or (high_open and value == high)))
    if bad or value != value:  # value != value catches NaN
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        raise UserError(f"{name} = {value} is out of range; it must lie in {lo or '(-inf'}, {hi or 'inf)'}")
    return value


def parse_labels(text, n, nclass):
    """'3' or '0,1,2' (cycled to n) or None (0, 1, ..., nclass-1 cycled) -> [n] int64."""
    try:
        values = list(range(nclass)) if text is None else [int(v) for v in str(text).split(",")]
    except ValueError:
        raise UserError(f"--labels '{text}' must be comma-separated class ids, e.g. 0,3,7") from None
    bad = [v for v in values if not 0 <= v < nclass]
    if bad:
        raise UserError(f"--labels {bad[:3]} outside [0, {nclass - 1}] (this teacher has {nclass} classes)")
    return torch.tensor([values[i % len(values)] for i in range(n)])


if __name__ == "__main__":
    for name, p in PRESETS.items():
        g = p["generator"]
        size = f"D={g['hidden_dim']} depth={g['depth']}" if "hidden_dim" in g else \
            f"D={g['decoder_embed_dim']} depth={g['decoder_depth']}" if "decoder_depth" in g else \
            f"D={g['num_attention_heads'] * g['attention_head_dim']} depth={g['num_layers']}+{g['num_single_layers']}"
        print(f"{name:14s} {p['family']:9s} {size} V={g['codebook_size']} "
              f"sampler={p['sampler']}\n{'':14s} distill={p.get('distill', '(issue 39)')}")
