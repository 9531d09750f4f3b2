"""Training the toy text-to-image world: Meissonic's three classes on the toy scenes, written as a released folder.

This is how ``assets/meissonic_toy/`` was made (docs/text_to_image.md has the commands and their times); the output is
the released Meissonic folder layout (``vqvae/``, ``tokenizer/``, ``text_encoder/``, ``transformer/``, each with its
config.json and .safetensors), so ``teacher.load_meissonic`` loads it exactly as it loads the 1 B release.

1. ``python train.py vq --out DIR``: diffusers' VQModel (vq_model.py) as a VQ-VAE: reconstruction L1 + L2 of the
   decoded straight-through latents, codebook and commitment terms (beta 0.25), unused codes restarted from
   encoder outputs every 200 steps; and, ours, for a teacher that can predict its tokens: plain-background patches
   pulled to one latent and kept on one code (``train_vq`` says why), then a second stage that gives every distinct
   patch of the scenes its own code in any surroundings (``train_vq_dictionary``).  No perceptual or GAN loss.
2. ``python train.py text --out DIR``: a byte-level BPE vocabulary learned on the training captions (CLIP's format:
   256 byte symbols, the same with '</w>', the merges in order, start and end of text), then CLIP's text transformer
   (text_encoder.py) trained contrastively against a small convolutional image tower on (render, caption) pairs, as
   CLIP is (symmetric cross-entropy over the batch's similarities, a learned temperature).  The tower is kept in
   ``image_tower/`` (not part of Meissonic's layout): its pooled features are GenEval-toy's FID space.
3. ``python train.py t2i --out DIR``: Meissonic's transformer (meissonic.py) trained as Meissonic is: the scenes'
   VQ ids masked at a ratio cos(pi u / 2), u ~ U(0, 1), cross-entropy on the masked ids, the frozen text encoder's
   penultimate states and pooled projection as the condition, the caption dropped for the empty prompt with
   probability 0.1 (the unconditional branch of CFG); AdamW, warm-up then cosine decay, EMA of the weights (saved).
   The timestep is 0 (preset 'meissonic-toy' says why) and the micro-conditions are (48, 48, 0, 0, 6).

Training scenes never hold a held-out composition (scenes.py).  Same seed, same device, same folder.

Shapes: B batch, h x w token grid, L text tokens, E text width.
"""
import collections
import copy
import json
import os
import re
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from checkpoints import atomic_write, load_folder, write_safetensors
from config import ArgumentParser, UserError, check_range, get_preset
from masking import random_mask
from meissonic import MeissonicTransformer, TextCondition
from optim import decay_groups, ema_update, lr_at, masked_ce, optimise, psnr
from scenes import BACKGROUND, training_batch
from teacher import load_meissonic
from text_encoder import BOS, BYTE_SYMBOLS, EOS, CLIPTextEncoder, CLIPTokenizer, encode_prompts, normalise, presplit
from vq_model import VQModel

PRESET = "meissonic-toy"
WEIGHTS = dict(transformer="diffusion_pytorch_model.safetensors", vqvae="diffusion_pytorch_model.safetensors",
               text_encoder="model.safetensors", image_tower="model.safetensors")
TRAIN_SEED = 100                       # the scenes' seeds: 100 + the stage's --seed (held-out checks use others)


def write_part(folder, sub, config, model, stats):
    """One released-layout subfolder: config.json, the weights (.safetensors), training.json (how it was made)."""
    os.makedirs(os.path.join(folder, sub), exist_ok=True)
    write_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                      os.path.join(folder, sub, WEIGHTS[sub]))
    for name, obj in (("config.json", config), ("training.json", stats)):
        atomic_write(os.path.join(folder, sub, name), lambda f, o=obj: f.write(json.dumps(o, indent=1).encode()))


def stage_args(prog, description, steps, batch_size, lr, scenes):
    p = ArgumentParser(prog=f"train.py {prog}", description=description)
    p.add_argument("--out", default=os.path.join("runs", "meissonic_toy"), help="the Meissonic-layout folder")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--scenes", type=int, default=scenes, help="training scenes to draw")
    p.add_argument("--seed", type=int, default=0)
    return p


def check_stage(a):
    for name in ("steps", "batch_size", "scenes"):
        check_range("--" + name.replace("_", "-"), getattr(a, name), low=1)
    check_range("--lr", a.lr, low=0, low_open=True)
    torch.manual_seed(a.seed)
    return torch.Generator().manual_seed(a.seed)


# ----------------------------------------------------------------------------------------------------------------
# 1. The VQ model.
# ----------------------------------------------------------------------------------------------------------------
def token_patches(images, factor):
    """images [B, 3, H, W] -> [B h w, 3, f f]: each token's f x f patch, in the order of the VQ model's ids."""
    patch = images.unfold(2, factor, factor).unfold(3, factor, factor)         # [B, 3, h, w, f, f]
    return patch.permute(0, 2, 3, 1, 4, 5).flatten(4).flatten(0, 2)            # -> [Bhw, 3, ff]


def background_patches(images, factor):
    """images [B, 3, H, W] -> [B h w] True where a token's f x f patch is plain background (scenes.BACKGROUND)."""
    return (token_patches(images, factor) - torch.tensor(BACKGROUND).view(1, 3, 1)).abs().amax((1, 2)) < 1e-6


def patch_contents(images, factor):
    """images [B, 3, H, W] -> (contents [G, 3 f f] uint8, the distinct f x f patches, and [B h w] each token's
    index among them).  Pixels are compared to 1/255."""
    patch = token_patches(images, factor).flatten(1)                           # [Bhw, 3, ff] -> [Bhw, 3ff]
    return torch.unique((patch * 255).round().to(torch.uint8), dim=0, return_inverse=True)


def code_bits_per_patch(ids, content):
    """H(id | patch content) in bits over tokens ids [n] with content indices [n]: 0 when every patch content
    always gets one id, whatever surrounds it."""
    k = int(ids.max()) + 1
    c = torch.bincount(content * k + ids, minlength=(int(content.max()) + 1) * k).view(-1, k).float()  # [G, K]
    p = c / c.sum(1, keepdim=True).clamp_min(1)
    return float(-(c * p.clamp_min(1e-30).log2()).sum() / c.sum()) + 0.0        # + 0.0: as in entropy_bits


def entropy_bits(ids):
    """The entropy in bits of the empirical distribution of ids (a 1-d integer tensor)."""
    p = torch.bincount(ids).float()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum()) + 0.0                                    # + 0.0: no "-0.0" in reports


def codes_to_restart(usage, plain_usage=None):
    """Code uses [K] and their uses by plain patches [K] since the last restart -> the ids to restart: the unused
    codes, and (given plain_usage) the codes used mostly by plain patches but the one plain patches use most."""
    restart = usage == 0
    if plain_usage is not None:
        crowd = plain_usage > usage / 2
        crowd[plain_usage.argmax()] = False
        restart |= crowd
    return restart.nonzero()[:, 0]


def train_vq(vq, images, steps, batch_size, lr, warmup, gen, beta=0.25, background_weight=1.0, restart_every=200,
             progress=True):
    """VQ-VAE training of a VQModel on images [n, 3, H, W] in [0, 1]; returns the loss of every step.
    ``background_weight``: the weight of a pull of plain-background patches' latents to their batch mean (ours):
    the encoder sees far past its patch (and group norm sees the whole image), so without it a plain patch's latent
    moves with the objects around it and lands on any of ~240 near-equal codes, which the teacher cannot predict
    even from 90% of the other tokens (docs/text_to_image.md).  For the same reason plain patches keep one code: at
    each restart the codes used mostly by plain patches, but the most used of them, restart with the dead ones.
    ``background_weight`` 0 treats plain patches as any other (no pull, no one-code rule)."""
    vq.train()
    opt = torch.optim.Adam(vq.parameters(), lr=lr)
    codebook, losses = vq.quantize.embedding.weight, []
    usage, plain_usage = torch.zeros(vq.codebook_size), torch.zeros(vq.codebook_size)
    for step in tqdm(range(steps), desc="vq", mininterval=2, disable=not progress):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        x = images[torch.randint(len(images), (batch_size,), generator=gen)]
        z = vq.encode_latents(x)                                                 # [B, C, h, w]
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])                     # [B, C, h, w] -> [Bhw, C]
        ids = torch.cdist(flat, codebook).argmin(-1)
        q = codebook[ids]
        usage += torch.bincount(ids, minlength=vq.codebook_size)
        st = (flat + (q - flat).detach()).reshape(z.shape[0], *z.shape[2:], -1).permute(0, 3, 1, 2)  # -> NCHW
        recon = vq.decode_latents(st)
        loss = (recon - x).abs().mean() + F.mse_loss(recon, x) + F.mse_loss(q, flat.detach()) \
            + beta * F.mse_loss(flat, q.detach())
        is_plain = background_patches(x, vq.factor)                               # [Bhw]
        plain_usage += torch.bincount(ids[is_plain], minlength=vq.codebook_size)
        plain = flat[is_plain]                                                    # [n_plain, C]
        if background_weight and len(plain):
            loss = loss + background_weight * (plain - plain.mean(0).detach()).pow(2).sum(-1).mean()
        optimise(opt, vq, loss, "vq", step)
        losses.append(loss.item())
        if (step + 1) % restart_every == 0 and step + 1 < steps:                # dead codes: from encoder outputs
            dead = codes_to_restart(usage, plain_usage if background_weight else None)
            # drawn in proportion to their quantisation error: drawn uniformly they are mostly background, and
            # near-copies of the background code make a blank patch's id a coin toss the teacher must learn
            err = (flat - q).detach().pow(2).sum(-1)                               # [Bhw]
            if len(dead) and err.sum() > 0:
                with torch.no_grad():
                    codebook[dead] = flat.detach()[torch.multinomial(err, len(dead), True, generator=gen)]
            usage.zero_()
            plain_usage.zero_()
    return losses


def train_vq_dictionary(vq, images, steps, batch_size, lr, warmup, gen, progress=True):
    """The second VQ stage (ours): one code per distinct patch of the training scenes, whatever surrounds it.
    However well stage 1 reconstructs, its encoder sees past its patch (its convolutions' reach; group norm over the
    whole image), so one patch gets several codes in different scenes (2.6 bits a patch on the third world), and the
    teacher must guess among them although the scene fixes the pixels.  The scenes hold few distinct patches (212 in
    20,000: objects sit on the token lattice, one to a token), so each gets its own code, initialised at its mean
    stage-1 latent, the commonest patch first; then encoder, codebook and decoder learn that assignment: cross-entropy
    of the patch's code under softmax(-||z - e_k||^2), the nearest-code rule of ``encode``, plus L1 + L2
    reconstruction of the decoded assigned codes.  Patches never seen (held-out colour-shape pairs) land on the
    nearest code.  Returns the loss of every step."""
    contents, which = patch_contents(images, vq.factor)                         # [G, 3ff], [n h w]
    codebook = vq.quantize.embedding.weight
    if len(contents) > len(codebook):
        raise UserError(f"the scenes hold {len(contents)} distinct patches but the VQ model has {len(codebook)} codes: "
                        f"raise num_vq_embeddings in the preset or set --dictionary-steps 0")
    order = torch.bincount(which).argsort(descending=True)
    code_of = torch.empty(len(contents), dtype=torch.long)
    code_of[order] = torch.arange(len(contents))                                # commonest patch -> code 0
    which = which.view(len(images), -1)                                         # [n h w] -> [n, h w]
    vq.eval()
    with torch.no_grad():
        sums = torch.zeros(len(contents), codebook.shape[1])
        for x, w in zip(images.split(500), which.split(500)):
            z = vq.encode_latents(x)
            sums.index_add_(0, w.flatten(), z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))  # [B, C, h, w] -> [Bhw, C]
        codebook[code_of] = sums / torch.bincount(which.flatten(), minlength=len(contents)).unsqueeze(1)
    vq.train()
    opt = torch.optim.Adam(vq.parameters(), lr=lr)
    losses = []
    for step in tqdm(range(steps), desc="vq dictionary", mininterval=2, disable=not progress):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x, target = images[idx], code_of[which[idx]]                            # [B, 3, H, W], [B, h w]
        z = vq.encode_latents(x)                                                 # [B, C, h, w]
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])                     # [B, C, h, w] -> [Bhw, C]
        recon = vq.decode(target.view(len(x), *z.shape[2:]))                     # [B, h w] -> [B, h, w]
        loss = F.cross_entropy(-torch.cdist(flat, codebook).pow(2), target.flatten()) \
            + (recon - x).abs().mean() + F.mse_loss(recon, x)
        optimise(opt, vq, loss, "vq dictionary", step)
        losses.append(loss.item())
    return losses


def main_vq(argv=None):
    p = stage_args("vq", "train the toy VQ model (Meissonic's VQModel class)", 2000, 16, 1e-3, 20000)
    p.add_argument("--background-weight", type=float, default=1.0,
                   help="pull plain-background latents together and keep them on one code (0: off; train_vq says why)")
    p.add_argument("--dictionary-steps", type=int, default=2000,
                   help="steps of the second stage, one code per distinct patch (0: off; train_vq_dictionary says why)")
    a = p.parse_args(argv)
    gen = check_stage(a)
    check_range("--background-weight", a.background_weight, low=0)
    check_range("--dictionary-steps", a.dictionary_steps, low=0)
    config = dict(_class_name="VQModel", in_channels=3, out_channels=3, act_fn="silu", norm_type="group",
                  vq_embed_dim=None, sample_size=48, **get_preset(PRESET)["tokenizer"])
    vq = VQModel(**config)
    images, _, _ = training_batch(a.scenes, TRAIN_SEED + a.seed)
    held, _, _ = training_batch(min(500, a.scenes), TRAIN_SEED + 1000 + a.seed)
    t0 = time.time()
    losses = train_vq(vq, images, a.steps, a.batch_size, a.lr, a.warmup, gen, background_weight=a.background_weight)
    if a.dictionary_steps:
        losses = train_vq_dictionary(vq, images, a.dictionary_steps, a.batch_size, a.lr, a.warmup, gen)
    vq.eval()
    with torch.no_grad():
        ids = vq.encode(held)[1]
        recon = vq.decode(ids).clamp(0, 1)
    stats = dict(command="python train.py vq " + " ".join(argv or []), seconds=round(time.time() - t0, 1),
                 final_loss=round(losses[-1], 4), psnr_held_out=round(psnr(recon, held), 2),
                 codes_used_held_out=int(ids.unique().numel()),
                 plain_patch_code_bits=round(entropy_bits(ids.flatten()[background_patches(held, vq.factor)]), 3),
                 code_bits_per_patch=round(code_bits_per_patch(ids.flatten(), patch_contents(held, vq.factor)[1]), 3),
                 background_weight=a.background_weight, steps=a.steps, dictionary_steps=a.dictionary_steps,
                 seed=a.seed)
    write_part(a.out, "vqvae", config, vq, stats)
    print(f"wrote {a.out}/vqvae: {stats}")


# ----------------------------------------------------------------------------------------------------------------
# 2. The BPE vocabulary and the text encoder.
# ----------------------------------------------------------------------------------------------------------------
def learn_bpe(texts, max_merges=1000):
    """Byte-level BPE on texts, CLIP's way: each pre-split chunk is its byte symbols with '</w>' on the last, and
    the most frequent adjacent pair (ties: the first seen) is merged, until every chunk is one symbol or max_merges.
    -> (vocab {symbol: id}, merges.txt text)."""
    words = collections.Counter(chunk for t in texts for chunk in presplit(normalise(t)))
    split = {w: " ".join(BYTE_SYMBOLS[b] for b in w.encode("utf-8")) + "</w>" for w in words}   # no symbol has a space
    merges = []
    while len(merges) < max_merges:
        pairs = collections.Counter()
        for w, n in words.items():
            symbols = split[w].split(" ")
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=pairs.get)                                   # Counter keeps first-seen order on ties
        merges.append(best)
        joined = re.compile(r"(?<!\S)" + re.escape(" ".join(best)) + r"(?!\S)")   # whole symbols, left to right
        split = {w: joined.sub("".join(best), text) for w, text in split.items()}
    symbols = list(BYTE_SYMBOLS.values())
    symbols += [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {s: i for i, s in enumerate(symbols)}, "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)


class ImageTower(nn.Module):
    """The contrastive partner of the text encoder: 3 stride-2 convolutions, mean pool, a projection."""

    def __init__(self, width=64, out=128):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.SiLU(), nn.Conv2d(width, 2 * width, 3, 2, 1),
                                   nn.SiLU(), nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.SiLU(),
                                   nn.Conv2d(2 * width, 2 * width, 3, 1, 1), nn.SiLU())
        self.proj = nn.Linear(2 * width, out)

    def features(self, x):
        """images [B, 3, H, W] -> pooled features [B, 2 width] (GenEval-toy's FID space)."""
        return self.convs(x).mean((2, 3))

    def forward(self, x):
        return self.proj(self.features(x))


def load_image_tower(folder):
    """``DIR/image_tower/`` (config.json + model.safetensors), strictly."""
    return load_folder(os.path.join(folder, "image_tower"), "image tower", lambda c: ImageTower(**c))[0]


def train_text(tokenizer, encoder, tower, images, captions, steps, batch_size, lr, warmup, gen, progress=True):
    """CLIP's contrastive loss on (image, caption) pairs; returns the loss of every step."""
    ids = tokenizer(captions)                                                     # [n, L]
    log_scale = nn.Parameter(torch.tensor(2.659))                                # CLIP's init: log(1 / 0.07)
    params = list(encoder.parameters()) + list(tower.parameters()) + [log_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    losses = []
    for step in tqdm(range(steps), desc="text", mininterval=2, disable=not progress):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        t = F.normalize(encoder(ids[idx])["text_embeds"], dim=-1)
        v = F.normalize(tower(images[idx]), dim=-1)
        same = (ids[idx][:, None] == ids[idx][None]).all(-1).float()           # repeated captions: all positives
        logits = log_scale.clamp(max=4.6052).exp() * v @ t.T                    # [B, B]
        target = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        optimise(opt, nn.ModuleList([encoder, tower]), loss, "text", step)
        losses.append(loss.item())
    return losses


def main_text(argv=None):
    a = stage_args("text", "learn the toy BPE vocabulary and train CLIP's text class on the captions", 1500, 128,
                   5e-4, 20000).parse_args(argv)
    gen = check_stage(a)
    images, captions, _ = training_batch(a.scenes, TRAIN_SEED + a.seed)
    vocab, merges = learn_bpe(captions)
    folder = os.path.join(a.out, "tokenizer")
    os.makedirs(folder, exist_ok=True)
    files = {"vocab.json": json.dumps(vocab, ensure_ascii=False), "merges.txt": merges,
             "special_tokens_map.json": json.dumps(dict(bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)),
             "captions.txt": "\n".join(sorted(set(captions)))}                  # the words the world knows
    for name, text in files.items():
        atomic_write(os.path.join(folder, name), lambda f, t=text: f.write(t.encode("utf-8")))
    config = dict(get_preset(PRESET)["text_encoder"], vocab_size=len(vocab), bos_token_id=vocab[BOS],
                  eos_token_id=vocab[EOS], pad_token_id=vocab[EOS])
    tokenizer = CLIPTokenizer(vocab, merges, EOS, config["max_position_embeddings"])
    encoder, tower = CLIPTextEncoder(**config), ImageTower(out=config["projection_dim"])
    t0 = time.time()
    losses = train_text(tokenizer, encoder, tower, images, captions, a.steps, a.batch_size, a.lr, a.warmup, gen)
    stats = dict(command="python train.py text " + " ".join(argv or []), seconds=round(time.time() - t0, 1),
                 final_loss=round(sum(losses[-50:]) / len(losses[-50:]), 4), merges=len(merges.splitlines()) - 1,
                 vocab=len(vocab), steps=a.steps, seed=a.seed)
    write_part(a.out, "text_encoder", config, encoder.eval(), stats)
    write_part(a.out, "image_tower", dict(width=64, out=config["projection_dim"]), tower.eval(), stats)
    print(f"wrote {a.out}/tokenizer and {a.out}/text_encoder: {stats}")


# ----------------------------------------------------------------------------------------------------------------
# 3. The teacher.
# ----------------------------------------------------------------------------------------------------------------
def train_t2i(model, ids, captions, tokenizer, encoder, micro, steps, batch_size, lr, warmup, gen, dropout=0.1,
              ema_decay=0.999, progress=True):
    """Meissonic's masked-token training on VQ ids [n, h, w] with a caption each; returns (EMA model, losses)."""
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(decay_groups(model, 0.01), lr=lr, betas=(0.9, 0.99))
    empty_hidden, empty_pooled = encode_prompts(tokenizer, encoder, [""])
    texts = sorted(set(captions))                                                # the frozen encoder, once per text
    index = {t: i for i, t in enumerate(texts)}
    which = torch.tensor([index[c] for c in captions])                           # [n] -> row of the encodings
    encoded = [encode_prompts(tokenizer, encoder, texts[i:i + 500]) for i in range(0, len(texts), 500)]
    all_hidden, all_pooled = (torch.cat([e[k] for e in encoded]) for k in (0, 1))  # [T, L, E], [T, P]
    zero, losses = torch.zeros(1), []
    for step in tqdm(range(steps), desc="t2i teacher", mininterval=2, disable=not progress):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        idx = torch.randint(len(ids), (batch_size,), generator=gen)
        hidden, pooled = all_hidden[which[idx]], all_pooled[which[idx]]
        b = len(idx)
        cond = TextCondition(hidden, pooled, empty_hidden.expand(b, -1, -1), empty_pooled.expand(b, -1),
                             micro.expand(b, -1), zero, False)
        x0 = model.from_indices(ids[idx].flatten(1))                             # [B, h, w] -> [B, N, 1]
        x_t, mask = random_mask(x0, model.mask_id, "cosine", generator=gen)
        drop = torch.rand(b, generator=gen) < dropout                            # caption dropout
        loss = masked_ce(model.logits(x_t, cond, drop).float(), x0, mask, 0.0)
        optimise(opt, model, loss, "t2i teacher", step)
        ema_update(ema, model, ema_decay, step)
        losses.append(loss.item())
    return ema, losses


def main_t2i(argv=None):
    p = stage_args("t2i", "train the toy teacher (Meissonic's transformer class) on the scenes", 14000, 32, 5e-4,
                   40000)
    p.add_argument("--dropout", type=float, default=0.1, help="caption dropout (the unconditional branch)")
    a = p.parse_args(argv)
    gen = check_stage(a)
    check_range("--dropout", a.dropout, 0, 1, high_open=True)
    missing = [s for s in ("vqvae", "tokenizer", "text_encoder") if not os.path.isdir(os.path.join(a.out, s))]
    if missing:
        raise UserError(f"--out {a.out} has no {', '.join(missing)} yet: run python train.py vq --out {a.out} and "
                        f"python train.py text --out {a.out} first")
    preset = get_preset(PRESET)
    config = dict(_class_name="Transformer2DModel", patch_size=1, in_channels=64, guidance_embeds=False,
                  **preset["generator"])
    model = MeissonicTransformer(**{k: v for k, v in config.items() if not k.startswith("_")})
    write_part(a.out, "transformer", config, model, {})                          # so that the folder loads
    _, vq, tokenizer, encoder = load_meissonic(a.out, preset["prompt"]["resolution"], verbose=False)
    images, captions, _ = training_batch(a.scenes, TRAIN_SEED + 2000 + a.seed)
    with torch.no_grad():
        ids = torch.cat([vq.encode(x)[1] for x in images.split(500)])           # [n, h, w]
    del images
    res, aesthetic = preset["prompt"]["resolution"], preset["prompt"]["aesthetic"]
    micro = torch.tensor([[float(res), float(res), 0.0, 0.0, aesthetic]])
    t0 = time.time()
    ema, losses = train_t2i(model, ids, captions, tokenizer, encoder, micro, a.steps, a.batch_size, a.lr, a.warmup,
                            gen, a.dropout)
    stats = dict(command="python train.py t2i " + " ".join(argv or []), seconds=round(time.time() - t0, 1),
                 final_loss=round(sum(losses[-100:]) / len(losses[-100:]), 4), steps=a.steps, seed=a.seed)
    write_part(a.out, "transformer", config, ema, stats)
    print(f"wrote {a.out}/transformer: {stats}")


COMMANDS = {"vq": main_vq, "text": main_text, "t2i": main_t2i}
