"""Training the toy world: stage I (an LFQ tokenizer) and stage II (a MaskBit teacher), on toy data or a folder.

This is how the bundled ``maskbit-toy`` pair was made; the same code trains on your own images
(``root/<class>/*.png``).  It follows MaskBit's recipes at a size a laptop CPU can train in minutes:

Stage I, ``python train.py tokenizer --data toy --out T.pt``: the VQGAN+ encoder/decoder with lookup-free
quantisation, loss = L1 + L2 reconstruction + MaskBit's commitment term + MaskBit's entropy term
(per-sample entropy minus batch entropy of softmax(2 z.c / T) over the 2^C codes).  No perceptual or GAN loss at
this size.  CPU shortcut: the entropy terms are estimated on ``--entropy-positions`` random latent positions of the
batch instead of all of them (an unbiased estimate of the per-sample term).

Stage II, ``python train.py teacher --data toy --tokenizer T.pt --out G.pt``: LFQBert trained as a masked model:
arccos masking of the (position, split) entries, cross-entropy with label smoothing 0.1, class labels dropped with
probability 0.1 (the null class, for CFG), AdamW (0.9, 0.96), weight decay 0.045, linear warm-up then cosine decay,
gradient clipping 1.0, EMA of the weights (the EMA is what is saved).  Two choices are ours, not MaskBit's
(``masked_ce`` and ``decay_groups``; the bundled teacher was trained with them): the loss is over the masked entries
only, as in Di[M]O's auxiliary loss (MaskBit's MLMLoss averages over every entry, masked or not), and embeddings and
1-D parameters get no weight decay (MaskBit's AdamW decays every parameter).

``real_tokens``: real images tokenized once and cached (soft_refine.py's discriminator reads them).

Both write self-describing checkpoints atomically (``checkpoints.own_checkpoint``) and are deterministic for a seed.
``--amp`` runs their forward passes under bf16 autocast, for CPUs with bf16 units: measured in docs/toy_world.md, the
teacher keeps its quality at 1.76x less time per step, the tokenizer loses about 1.2 dB of PSNR.
"""
import contextlib
import copy
import math
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from checkpoints import cached, fingerprint, load_model, own_checkpoint, save_checkpoint
from config import ArgumentParser, UserError, check_range, get_preset, runtime
from data import data_key, load_images
from masking import random_mask
from optim import decay_groups, ema_update, lr_at, masked_ce, optimise, psnr
from teacher import build_teacher
from tokenizer import LFQTokenizer, build_tokenizer
from train_t2i import COMMANDS as T2I_COMMANDS


def common_args(parser):
    parser.add_argument("--data", default="toy", help="'toy' or an image folder root/<class>/*.png")
    parser.add_argument("--preset", default="maskbit-toy", help="architecture preset (python config.py lists them)")
    parser.add_argument("--out", required=True, help="checkpoint to write")
    parser.add_argument("--steps", type=int, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast for the forward passes (on CPU it pays only "
                        "with bf16 units such as AMX; it cost the tokenizer about 1.2 dB of PSNR: docs/toy_world.md)")


def check_common(args):
    for name in ("steps", "batch_size"):
        check_range("--" + name.replace("_", "-"), getattr(args, name), low=1)
    check_range("--lr", args.lr, low=0, low_open=True)


# ----------------------------------------------------------------------------------------------------------------
# Stage I: the LFQ tokenizer.
# ----------------------------------------------------------------------------------------------------------------
def train_tokenizer(model, images, steps, batch_size, lr, warmup, entropy_positions=512, gen=None, device="cpu",
                    progress=True, autocast=contextlib.nullcontext):
    """Stage I loop; returns the loss of every step.  Under autocast (bf16) only the encoder and decoder run in bf16:
    the LFQ terms divide code affinities by a temperature of 0.01, so they and the losses stay float32."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    bar = tqdm(range(steps), desc="tokenizer", mininterval=2, disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        x = images[torch.randint(len(images), (batch_size,), generator=gen)].to(device)
        with autocast():
            z = model.encode_z(x)
            recon = model.decode(model.quantize_z(z)[0])
        z, recon = z.float(), recon.float()
        commitment, entropy = model.lfq_losses(z, entropy_positions, gen)
        loss = (recon - x).abs().mean() + F.mse_loss(recon, x) + commitment + entropy
        optimise(opt, model, loss, "tokenizer", step)
        losses.append(loss.item())
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", entropy=f"{entropy.item():.4f}")
    return losses


def tokenizer_parser():
    """train.py tokenizer's options and defaults (also read by bench.py toy-world)."""
    parser = ArgumentParser(prog="train.py tokenizer", description="train a small MaskBit (LFQ) tokenizer")
    common_args(parser)
    parser.add_argument("--entropy-positions", type=int, default=512,
                        help="latent positions per batch used for the LFQ entropy terms")
    parser.add_argument("--train-images", type=int, default=20000, help="toy images to generate")
    parser.set_defaults(steps=3000, batch_size=32)
    return parser


def main_tokenizer(argv=None):
    args = tokenizer_parser().parse_args(argv)
    check_common(args)
    preset = get_preset(args.preset)
    if preset["family"] != "maskbit":
        raise UserError(f"tokenizer training builds an LFQ tokenizer; preset '{args.preset}' is {preset['family']}")
    rt = runtime(args.device, args.amp)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    images, _, _ = load_images(args.data, "train", args.train_images if args.data == "toy" else None)
    held_out, _, _ = load_images(args.data, "test", 500 if args.data == "toy" else None)
    model = LFQTokenizer(preset["tokenizer"]).to(rt.device)
    t0 = time.time()
    train_tokenizer(model, images, args.steps, args.batch_size, args.lr, args.warmup, args.entropy_positions, gen,
                    rt.device, autocast=rt.autocast)
    model.eval()
    with torch.no_grad():
        recon = torch.cat([model.decode(model.encode(b.to(rt.device))[0]).cpu() for b in held_out.split(100)])
        used = torch.cat([model.images_to_indices(b.to(rt.device)).cpu() for b in held_out.split(100)]).unique()
    stats = dict(psnr_held_out=round(psnr(recon, held_out), 2), codes_used_held_out=int(used.numel()),
                 train_seconds=round(time.time() - t0, 1), steps=args.steps, batch_size=args.batch_size,
                 data=args.data, seed=args.seed, amp=args.amp)
    save_checkpoint(own_checkpoint("tokenizer", args.preset, preset["tokenizer"], model.cpu(), stats=stats), args.out)
    print(f"wrote {args.out}: {stats}")


# ----------------------------------------------------------------------------------------------------------------
# Stage II: the masked teacher (LFQBert) on the tokenizer's bit tokens.
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def tokenize(tokenizer, teacher, images, device, batch=250):
    """Images -> per-split tokens [n, N, S] of the teacher's layout."""
    return torch.cat([teacher.from_indices(tokenizer.images_to_indices(b.to(device))).cpu()
                      for b in images.split(batch)])


def real_tokens(tokenizer, teacher, data, cache_dir, device, save=True):
    """Real images -> tokens [n, N, S] and labels [n], tokenized once and cached under a key of the tokenizer's
    weights, the teacher's token layout and the data (``data_key``); cache_dir '' caches nothing."""
    key = fingerprint(data_key(data), f"splits={teacher.splits}", tokenizer)
    name = f"real_tokens-{key[:16]}.pt"
    saved = cached((cache_dir,), name, key, "token cache") if cache_dir else None
    if saved is not None:
        return saved["tokens"], saved["labels"]
    images, labels, nclass = load_images(data, "train")
    if nclass != teacher.nclass:
        raise UserError(f"--data {data} has {nclass} classes but the teacher has {teacher.nclass}")
    size = tokenizer.downsample * math.isqrt(teacher.seq_len)
    if tuple(images.shape[-2:]) != (size, size):
        raise UserError(f"--data {data}: images are {images.shape[-1]}x{images.shape[-2]} but the teacher's "
                        f"tokenizer expects {size}x{size}; resize them")
    with torch.no_grad():
        tokens = tokenize(tokenizer.eval(), teacher, images, device)
    if save and cache_dir:                                               # one writer under DDP
        save_checkpoint(dict(key=key, tokens=tokens, labels=labels, data=data), os.path.join(cache_dir, name))
    return tokens, labels


def train_teacher(model, tokens, labels, steps, batch_size, lr, warmup, label_dropout=0.1, label_smoothing=0.1,
                  ema_decay=0.999, gen=None, device="cpu", progress=True, autocast=contextlib.nullcontext):
    """Stage II loop on tokens [n, N, S] with labels [n]; returns (EMA copy of the model, loss of every step).
    Under autocast (bf16) the transformer runs in bf16, the cross-entropy in float32."""
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(decay_groups(model), lr=lr, betas=(0.9, 0.96))
    losses = []
    bar = tqdm(range(steps), desc="teacher", mininterval=2, disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        idx = torch.randint(len(tokens), (batch_size,), generator=gen)
        x0, y = tokens[idx].to(device), labels[idx].to(device)
        x_t, mask = random_mask(x0, model.mask_id, "arccos", generator=gen)
        drop = torch.rand(batch_size, generator=gen).to(device) < label_dropout
        with autocast():
            logits = model.logits(x_t, y, drop)                           # [B, N, S, V]
        loss = masked_ce(logits.float(), x0, mask, label_smoothing)
        optimise(opt, model, loss, "teacher", step)
        ema_update(ema, model, ema_decay, step)
        losses.append(loss.item())
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return ema, losses


def teacher_parser():
    """train.py teacher's options and defaults (also read by bench.py toy-world)."""
    parser = ArgumentParser(prog="train.py teacher", description="train a small MaskBit teacher (LFQBert)")
    common_args(parser)
    parser.add_argument("--tokenizer", required=True, help="tokenizer checkpoint from 'train.py tokenizer'")
    parser.add_argument("--train-images", type=int, default=30000, help="toy images to generate and tokenize")
    parser.add_argument("--label-dropout", type=float, default=0.1)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.set_defaults(steps=2000, batch_size=128)
    return parser


def main_teacher(argv=None):
    args = teacher_parser().parse_args(argv)
    check_common(args)
    check_range("--label-dropout", args.label_dropout, 0, 1, high_open=True)
    check_range("--label-smoothing", args.label_smoothing, 0, 1, high_open=True)
    check_range("--ema", args.ema, 0, 1, high_open=True)
    preset = get_preset(args.preset)
    rt = runtime(args.device, args.amp)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    tokenizer, _ = load_model("tokenizer", args.preset, args.tokenizer, build_tokenizer)
    tokenizer = tokenizer.to(rt.device)
    model = build_teacher(preset["family"], preset["generator"]).to(rt.device)
    images, labels, nclass = load_images(args.data, "train", args.train_images if args.data == "toy" else None)
    if nclass != model.nclass:
        raise UserError(f"the data has {nclass} classes but preset '{args.preset}' has nclass={model.nclass}")
    tokens = tokenize(tokenizer, model, images[:1], rt.device)
    if tokens.shape[1] != model.seq_len:
        raise UserError(f"{images.shape[-1]}x{images.shape[-2]} images give {tokens.shape[1]} tokens but preset "
                        f"'{args.preset}' expects {model.seq_len}; resize the images or add a preset in config.py")
    tokens = tokenize(tokenizer, model, images, rt.device)
    del images
    t0 = time.time()
    ema, losses = train_teacher(model, tokens, labels, args.steps, args.batch_size, args.lr, args.warmup,
                                args.label_dropout, args.label_smoothing, args.ema, gen, rt.device,
                                autocast=rt.autocast)
    loss = torch.tensor(losses[-1])
    stats = dict(final_loss=round(loss.item(), 4), train_seconds=round(time.time() - t0, 1), steps=args.steps,
                 batch_size=args.batch_size, data=args.data, seed=args.seed, tokenizer=args.tokenizer, amp=args.amp)
    save_checkpoint(own_checkpoint("teacher", args.preset, preset["generator"], ema.cpu(), stats=stats), args.out)
    print(f"wrote {args.out}: {stats}")


def main(argv):
    """python train.py tokenizer|teacher ... (class-to-image) or vq|text|t2i ... (text-to-image: train_t2i.py)"""
    commands = {"tokenizer": main_tokenizer, "teacher": main_teacher, **T2I_COMMANDS}
    if not argv or argv[0] not in commands:
        raise UserError(f"usage: python train.py {{{','.join(commands)}}} [--help]")
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    import sys

    from config import cli
    cli(lambda: main(sys.argv[1:]))
