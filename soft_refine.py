"""Soft-Di[M]O (arXiv 2509.22925): soft embeddings make the one-step generator differentiable, and a GAN on real data
refines a Di[M]O generator past its teacher.

Soft embedding (Soft-Di[M]O Sec. 2.2): instead of the embedding of a token drawn from p = softmax(z), use the expected
embedding under p, e~ = sum_j p_j E_j = E^T p.  It is a smooth function of the logits z, so a loss on anything
computed from e~ (a discriminator's verdict, a reward on the decoded image) reaches the generator's weights.  For
peaked p it is close to the sampled token's embedding (the bias is O(covariance of E under p)).  Two tables:

* Emb_phi(z), the teacher's input embedding: MaskBit has no table; a token is its bits in {-1, +1} and the input
  layer is linear, so E_p[bits] (``maskbit.LFQBert.soft_features``) is exactly the expected input (our derivation
  from MaskBit's code; the paper's full text was not available).  MaskGIT: the expected ``tok_emb`` row over all
  K + 1 classes of its head, mask class included: a sampled mask id is fed to the teacher as the mask token on the
  hard path too, so the soft path stays its expectation, and mass on the mask class is visible to the discriminator
  (real images never have it), which is what should push it out.
* Emb_Dec(z), the decoder's latent: the same expected bit vector for LFQ; the expected code vector for VQ, with the
  mask class's mass on code K-1, where the hard path's clamp puts a sampled mask id (``tokenizer.expected_latents``).

``--relax gumbel-st`` (the paper's ablation baseline): the forward pass uses the one-hot of a Gumbel-max draw (a hard
sample of p), the backward pass the gradient of softmax(z + Gumbel noise).

The stage: L_gen = w_DiMO L_DiMO + w_GAN L_GAN + w_reward L_reward (Sec. 2.3; the paper uses the GAN for
class-to-image and the reward for text-to-image; here either or both).  L_DiMO is distill.py's loss on hard
samples, with its auxiliary model still trained on-policy; this file only adds terms to distill.py's loop through
its seams (``run.w_dimo``, ``run.extra_terms``, ``run.after_step``, ``run.extra_state``).
L_GAN = E[softplus(-D(mask_r(Emb_phi(z)), r, c))] = E[-log sigmoid D], the non-saturating loss (Sec. 2.4).
L_reward = -E[sum_i lambda_i R_i(Dec(Emb_Dec(z)), c)] (Sec. 2.5) for the rewards of ``--reward`` (rewards.py);
Di[M]O is the paper's regulariser against reward hacking (``--w-dimo 0`` shows what happens without it).

Discriminator (the paper gives its place, not its parts; what is ours is marked so in docs/soft_dimo.md):
* backbone: the frozen teacher (the poster) or the auxiliary model (DMD2 puts its head there), read after the blocks
  in ``--d-layers``; no GAN loss ever changes a backbone weight (the auxiliary model keeps learning only its own
  Di[M]O objective, which its role as p_theta's estimate needs);
* one head per layer (ours): LayerNorm -> Linear -> FiLM on the mask ratio r -> SiLU -> a logit per position, plus a
  projection term <class embedding, features> for the label;
* inputs: real images tokenized once (hard embeddings) and the generator's soft embeddings, both with a fraction
  r ~ U[0, r_max] of their entries replaced by the mask embedding (MaskBit: a split's zero bits), r fed to the heads;
* loss (ours, DMD2's): softplus(D(fake)) + softplus(-D(real)), averaged over positions and layers, Adam, one update
  per generator update after ``--d-warmup`` discriminator-only steps.
* ``--soft-temperature T`` (ours): the GAN (and the reward) judges softmax(z / T).  T = 1 is the paper's plain
  softmax, right for the peaked students it describes; the toy student samples best at T = 0.2, and judging that
  is what works (docs/soft_dimo.md).
* ``--sigma-init`` (ours): the generator's input perturbation while the stage trains.  The toy preset's 0.06 is near
  where the refined generator is then sampled (as the toy Di[M]O run's own 0.06 is; the paper's is 0.1), so the GAN
  refines the images inference makes; the inference sigma is then tuned on a grid around it (docs/soft_dimo.md,
  issue 26).

Run:  python soft_refine.py                      (after python distill.py --teacher maskbit; minutes on a CPU)
      python soft_refine.py --w-dimo 0           (GAN only)      python soft_refine.py --relax gumbel-st
      python soft_refine.py --reward classifier --out runs/reward    (reward fine-tuning, no GAN unless --w-gan)
Shapes: B batch, N tokens, S splits, V classes per split, F input-feature width, D width, H head width.
"""
import contextlib
import copy
import json
import math
import os
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import ddp
import distill
from checkpoints import load_checkpoint
from config import PRESETS, ArgumentParser, UserError, check_range, cli, runtime
from generator import draw_r_init, generator_logits, token_init
from rewards import parse_rewards, score
from tasks import build_task
from train import real_tokens

RELAXATIONS = ("soft", "gumbel-st")
BACKBONES = ("teacher", "aux")


# ----------------------------------------------------------------------------------------------------------------
# Soft embeddings: the one implementation, imported wherever one is needed.
# ----------------------------------------------------------------------------------------------------------------
def relax(z, mode="soft", generator=None):
    """Token probabilities [B, N, S, V] from logits z that carry z's gradient.
    soft: p = softmax(z) (Soft-Di[M]O).  gumbel-st: one_hot(argmax(z + G)) forward, d softmax(z + G) backward."""
    p = torch.softmax(z.float(), -1)
    if mode == "soft":
        return p
    if mode != "gumbel-st":
        raise ValueError(f"unknown relaxation '{mode}'; choose one of {', '.join(RELAXATIONS)}")
    u = torch.rand(z.shape, generator=generator, device=z.device).clamp(1e-20, 1 - 1e-7)
    y_soft = torch.softmax(z.float() - torch.log(-torch.log(u)), -1)   # Gumbel-softmax, tau = 1
    y_hard = F.one_hot(y_soft.argmax(-1), z.shape[-1]).to(y_soft.dtype)  # a draw from softmax(z) (Gumbel-max)
    return y_hard + (y_soft - y_soft.detach())                          # exactly y_hard forward, straight-through


def soft_embedding(model, probs):
    """Emb_phi(z): the teacher-input embedding e~ [B, N, D] = input_embed(E_p[features])."""
    return model.input_embed(model.soft_features(probs))


def soft_images(tokenizer, probs):
    """Dec(Emb_Dec(z)): images [B, 3, H, W] (unclamped, differentiable) decoded from the expected latents."""
    return tokenizer.latents_to_images(tokenizer.expected_latents(probs))


def mask_entries(model, features, r_max, generator=None):
    """The GAN's masking augmentation: per sample r ~ U[0, r_max], round(r M) of the M = N*S entries of the input
    features [B, N, F] take the mask token's features (MaskBit: that split's zero bits; MaskGIT: tok_emb[mask]).
    -> (features [B, N, F], realised mask ratio [B])."""
    b, n, f = features.shape
    s, m = model.splits, n * model.splits
    count = (torch.rand(b, generator=generator, device=features.device) * r_max * m).round()
    rank = torch.rand(b, m, generator=generator, device=features.device).argsort(-1).argsort(-1)
    mask = (rank < count[:, None]).reshape(b, n, s, 1)                 # [B, M] -> [B, N, S, 1]
    all_mask = torch.full((1, n, s), model.mask_id, dtype=torch.long, device=features.device)
    masked_features = model.features(all_mask).to(features.dtype).reshape(1, n, s, f // s)  # [1,N,F]->[1,N,S,F/S]
    out = torch.where(mask, masked_features, features.reshape(b, n, s, f // s))           # [B,N,F]->[B,N,S,F/S]
    return out.reshape(b, n, f), count / m                               # [B, N, S, F/S] -> [B, N, F]


# ----------------------------------------------------------------------------------------------------------------
# The discriminator: heads on a frozen backbone's hidden states.
# ----------------------------------------------------------------------------------------------------------------
class Head(nn.Module):
    """Per-position logit from one layer's states [B, N+1, D], conditioned on the mask ratio r (FiLM) and the class
    (projection discriminator term)."""

    def __init__(self, width, nclass, hidden=128):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, hidden)
        self.film = nn.Linear(1, 2 * hidden)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)                                   # starts unconditioned on r
        self.out = nn.Linear(hidden, 1)
        self.class_emb = nn.Embedding(nclass, hidden)
        nn.init.normal_(self.class_emb.weight, std=0.02)
        self.hidden = hidden

    def forward(self, h, labels, r):
        scale, shift = self.film(r[:, None].to(h.dtype)).chunk(2, -1)    # [B, 1] -> 2 x [B, H]
        u = F.silu(self.proj(self.norm(h)) * (1 + scale[:, None]) + shift[:, None])  # [B, N+1, H]
        projection = (u * self.class_emb(labels)[:, None]).sum(-1) / math.sqrt(self.hidden)
        return self.out(u)[..., 0] + projection                         # [B, N+1]


class Discriminator(nn.Module):
    """The trainable part: one Head per backbone layer in ``layers``.  forward(states, labels, r) -> [B, L, N+1]."""

    def __init__(self, width, nclass, layers, hidden=128):
        super().__init__()
        self.layers = tuple(layers)
        self.heads = nn.ModuleList(Head(width, nclass, hidden) for _ in self.layers)

    def forward(self, states, labels, r):
        return torch.stack([head(h.float(), labels, r) for head, h in zip(self.heads, states)], 1)


@contextlib.contextmanager
def weights_frozen(*modules):
    """Leave the modules' weights out of the autograd graph built inside (gradients still flow to the inputs): the
    generator's GAN loss must not touch the discriminator or its backbone, and under DDP a gradient that reaches a
    wrapped module outside its own forward would also confuse DDP's hooks."""
    trainable = [p for m in modules for p in m.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def backbone_states(run, features, labels):
    """Hidden states of the discriminator's backbone for input features [B, N, F] (already masked)."""
    model = run.teacher if run.args.d_backbone == "teacher" else run.aux
    with run.rt.autocast():
        return model.hidden_states(model.input_embed(features), labels, run.disc.layers)


# ----------------------------------------------------------------------------------------------------------------
# The two updates Soft-Di[M]O adds to Di[M]O's loop.
# ----------------------------------------------------------------------------------------------------------------
def fake_features(run, z):
    """The discriminator's fake input from logits z: Emb_phi's features of relax(z / T), masked.  -> (features
    [B, N, F], mask ratio [B]); differentiable in z."""
    a = run.args
    probs = relax(z / a.soft_temperature, a.relax, run.rng)              # [B, N, S, V]
    return mask_entries(run.teacher, run.teacher.soft_features(probs), a.r_max, run.rng)


def gan_term(run, z, labels):
    """L_GAN on the soft embeddings of the generator's logits z: its gradient reaches theta only through relax()."""
    a = run.args
    features, r = fake_features(run, z)
    with weights_frozen(run.teacher, run.aux, run.disc):
        states = backbone_states(run, features, labels)
        logits = run.disc(states, labels, r)                             # [B, L, N+1]
    loss = F.softplus(-logits).mean()                                    # -log sigmoid D(fake): non-saturating
    run.fake_cache = ([h.detach() for h in states], labels, r)           # the discriminator's fake batch
    return a.w_gan * loss, dict(loss_gan=loss.item())


@torch.no_grad()
def fake_batch(run):
    """A fresh batch of the generator's soft embeddings for the discriminator: (backbone states, labels, r)."""
    a, rng = run.args, run.rng
    labels = torch.randint(0, run.teacher.nclass, (a.batch_size,), generator=rng).to(run.rt.device)
    x_init = token_init(run.gen, a.batch_size, draw_r_init(a.r_init, rng), rng).to(run.rt.device)
    with run.rt.autocast():
        z = generator_logits(run.gen, labels, x_init, a.sigma_init, rng)
    features, r = fake_features(run, z)
    return backbone_states(run, features, labels), labels, r


def reward_term(run, z, labels):
    """L_reward on the soft-decoded images of the generator's logits z: reward -> image -> decoder -> Emb_Dec ->
    relax -> z -> theta."""
    a = run.args
    with run.rt.autocast():
        images = soft_images(run.task.tokenizer, relax(z / a.soft_temperature, a.relax, run.rng))  # [B, 3, H, W]
    total, _ = score(run.rewards, images, labels)
    return -a.w_reward * total.mean(), dict(loss_reward=-total.mean().item())  # Soft-Di[M]O Sec. 2.5


@torch.no_grad()
def mean_reward(run, images, labels):
    """The mean total reward of evaluated images (the monitor's and the final evaluation's), 4 decimals."""
    return round(score(run.rewards, images, labels)[0].mean().item(), 4)


def d_step(run, fake, lr, step):
    """One discriminator step: softplus(D(fake)) + softplus(-D(real)) on a batch of real images tokenized once."""
    a, rng = run.args, run.rng
    fake_states, fake_labels, fake_r = fake
    idx = torch.randint(len(run.real_tokens), (a.batch_size,), generator=rng)
    tokens, labels = run.real_tokens[idx].to(run.rt.device), run.real_labels[idx].to(run.rt.device)
    with torch.no_grad():
        features, r = mask_entries(run.teacher, run.teacher.features(tokens).float(), a.r_max, rng)
        real_states = backbone_states(run, features, labels)
    for group in run.opt_d.param_groups:
        group["lr"] = lr
    run.opt_d.zero_grad(set_to_none=True)
    d_real, d_fake = run.disc_call(real_states, labels, r), run.disc_call(fake_states, fake_labels, fake_r)
    loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    distill.check_finite("discriminator loss", loss.item(), step)
    loss.backward()
    run.opt_d.step()
    return dict(loss_d=loss.item(), d_real=torch.sigmoid(d_real).mean().item(),
                d_fake=torch.sigmoid(d_fake).mean().item())


def discriminator_update(run, step, lr_scale):
    """--d-updates discriminator steps after each generator update: the first on the generator's own batch of this
    step (its detached backbone states, no extra pass), the others on fresh batches."""
    stats = d_step(run, run.fake_cache, run.args.lr_d * lr_scale, step)
    for _ in range(run.args.d_updates - 1):
        stats = d_step(run, fake_batch(run), run.args.lr_d * lr_scale, step)
    run.fake_cache = None
    return stats


def warm_up_discriminator(run):
    """--d-warmup discriminator-only steps before the first generator update, so that the generator's first GAN
    gradients come from a discriminator that already tells real from fake."""
    for i in tqdm(range(run.args.d_warmup), desc="discriminator warm-up", mininterval=2, disable=not ddp.is_main()):
        d_step(run, fake_batch(run), run.args.lr_d, -run.args.d_warmup + i)


# ----------------------------------------------------------------------------------------------------------------
# The run, the command line.
# ----------------------------------------------------------------------------------------------------------------
def build_parser():
    p = ArgumentParser(prog="soft_refine.py", description="Soft-Di[M]O: GAN refinement of a Di[M]O generator")
    p.add_argument("--init", default="runs/distill", help="the distill.py run to start from")
    p.add_argument("--out", default="runs/soft", help="output folder")
    p.add_argument("--resume", metavar="DIR", help="continue the soft_refine.py run saved in DIR")
    p.add_argument("--data", help="real images: 'toy' (default for the bundled pair) or a folder root/<class>/*.png")
    p.add_argument("--cache", default="runs/cache", help="exact caches: tokenized real images, the "
                   "teacher's reference samples ('': make them anew)")
    p.add_argument("--steps", type=int, help="generator updates (default per preset)")
    p.add_argument("--batch-size", type=int, help="per-process batch (default: the --init run's)")
    p.add_argument("--lr", type=float, help="generator learning rate (default per preset)")
    p.add_argument("--lr-aux", type=float, help="auxiliary-model learning rate (default: the --init run's)")
    p.add_argument("--lr-decay", type=float, help="the generator's lr decays linearly to 0 over this final fraction "
                   "of the steps (0: constant after warm-up; default per preset)")
    p.add_argument("--lr-d", type=float, help="discriminator-head learning rate (default per preset)")
    p.add_argument("--weight-decay", type=float, help="> 0: AdamW for the generator (paper's long MaskBit run: 0.01)")
    p.add_argument("--w-gan", type=float, help="weight of L_GAN (default per preset)")
    p.add_argument("--w-dimo", type=float, default=1.0, help="weight of L_DiMO (0: GAN and/or reward only)")
    p.add_argument("--reward", help="reward fine-tuning: NAME[:WEIGHT],... with NAME 'classifier', a reward "
                   "classifier FILE.pt or module:function (rewards.py); no GAN then unless --w-gan is given")
    p.add_argument("--w-reward", type=float, default=1.0, help="weight of L_reward")
    p.add_argument("--r-max", type=float, default=0.95, help="GAN masking: r ~ U[0, r_max] of the entries masked")
    p.add_argument("--relax", default="soft", help="soft (expected embedding) | gumbel-st (straight-through)")
    p.add_argument("--soft-temperature", type=float, help="the GAN and the reward see softmax(z / T): 1 is the "
                   "paper's plain softmax (default per preset)")
    p.add_argument("--d-layers", help="backbone blocks the heads read, 1-based, e.g. 2,3,4 (default: the last "
                   "three, or all if fewer)")
    p.add_argument("--d-backbone", default="teacher", help="teacher (frozen, the poster) | aux (DMD2's choice)")
    p.add_argument("--d-hidden", type=int, default=128, help="width of each discriminator head")
    p.add_argument("--d-updates", type=int, default=1, help="discriminator steps per generator step")
    p.add_argument("--d-warmup", type=int, help="discriminator-only steps before training (default per preset)")
    p.add_argument("--sigma-init", type=float, help="the generator's input perturbation while the stage trains "
                   "(default per preset: the toy's 0.06, near where it is sampled; else the --init run's)")
    p.add_argument("--tune-temperature", help="temperatures tried before the final evaluation (default: "
                   "the --init run's grid)")
    p.add_argument("--tune-sigma", help="inference sigmas tried after the temperature (default: the --init run's)")
    p.add_argument("--gen-sigma", type=float, help="a fixed inference sigma instead of the tuned one")
    p.add_argument("--recall-margin", type=float, help="the sigma tuning aims recall at the teacher's minus this "
                   "margin (default: the --init run's)")
    p.add_argument("--eval-n", type=int, help="samples per final measurement (default: the --init run's)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=100, help="in-training FID every N steps (and at the end)")
    p.add_argument("--monitor-n", type=int, default=500, help="samples of that in-training FID (0: off)")
    p.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps (and at the end)")
    distill.runtime_args(p)
    return p


# Settings that runs saved before their flag existed lack (a --init run without --teacher-dropout, a soft run
# without --reward): the values those runs had.
SAVED_BEFORE_FLAGS = dict(distill.SAVED_BEFORE_FLAGS, teacher_dropout=False, reward=None, w_reward=1.0, lr_decay=0.0,
                          monitor_temperature=None)


def settings(a):
    """The run's settings: the --init run's (teacher, tokenizer, Di[M]O settings), overridden by the flags given
    here; this stage's preset defaults (config.PRESETS[...]['soft']) fill the rest in ``setup``."""
    if not os.path.isfile(os.path.join(a.init, "checkpoint.pt")):
        raise UserError(f"--init {a.init}: no Di[M]O run there (make one with: python distill.py --teacher maskbit"
                        f"{'' if a.init == 'runs/distill' else ' --out ' + a.init})")
    init = load_checkpoint(os.path.join(a.init, "checkpoint.pt"), "--init run checkpoint")
    if init["args"].get("teacher") == "toy-vocab":
        raise UserError(f"--init {a.init} is a toy-vocab run; soft_refine.py needs an image teacher's run")
    flags = {k: v for k, v in vars(a).items() if v is not None}
    s = SimpleNamespace(**{**SAVED_BEFORE_FLAGS, **init["args"], **flags})
    s.init_step, s.resume, s.grid_every, s.save_samples, s.temperatures = init["step"], None, 0, 0, None
    return s, init, flags


def check_soft(a, depth):
    if a.relax not in RELAXATIONS:
        raise UserError(f"--relax '{a.relax}': choose one of {', '.join(RELAXATIONS)}")
    if a.d_backbone not in BACKBONES:
        raise UserError(f"--d-backbone '{a.d_backbone}': choose one of {', '.join(BACKBONES)}")
    check_range("--r-max", a.r_max, 0, 1)
    check_range("--soft-temperature", a.soft_temperature, low=0, low_open=True)
    check_range("--w-gan", a.w_gan, low=0)
    check_range("--w-dimo", a.w_dimo, low=0)
    check_range("--lr-d", a.lr_d, low=0, low_open=True)
    check_range("--weight-decay", a.weight_decay, low=0)
    check_range("--d-hidden", a.d_hidden, low=1)
    check_range("--d-updates", a.d_updates, low=1)
    check_range("--d-warmup", a.d_warmup, low=0)
    check_range("--monitor-n", a.monitor_n, low=0)
    try:
        layers = sorted({int(x) for x in str(a.d_layers).split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--d-layers '{a.d_layers}' must be block numbers like 2,3,4") from None
    if not layers or layers[0] < 1 or layers[-1] > depth:
        raise UserError(f"--d-layers '{a.d_layers}': the backbone has blocks 1 ... {depth}")
    check_range("--w-reward", a.w_reward, low=0)
    if a.w_gan == 0 and a.w_dimo == 0 and not (a.reward and a.w_reward > 0):
        raise UserError("--w-gan 0 and --w-dimo 0 (and no --reward) leave nothing to train; give one a weight")
    return layers


def setup(a, init, resume, flags=None):
    """Models from the --init run, the discriminator, optimisers and the seams into distill.py's loop."""
    rt = runtime(ddp.local_device(a.device), a.amp, a.compile)
    task = build_task(a, rt)                                             # resolves the preset (maskbit -> toy)
    if resume is None:
        a.reward = flags.get("reward")
        for key, value in PRESETS[task.preset]["soft"].items():         # this stage's defaults, below the flags
            if key not in flags and value is not None:
                setattr(a, key, value)
        if a.reward and "w_gan" not in flags:                            # reward fine-tuning: the GAN if asked
            a.w_gan = 0.0
        depth = len(task.teacher.transformer.layers)
        a.d_layers = flags.get("d_layers") or ",".join(str(round(depth * k / 3)) for k in (1, 2, 3))  # thirds
        a.data = flags.get("data") or ("toy" if "bundled" in PRESETS[task.preset] else None)
        if a.data is None and a.w_gan > 0:                               # only the GAN reads real images
            raise UserError(f"preset '{task.preset}' has no bundled data: pass --data FOLDER (root/<class>/*.png, "
                            f"the images the teacher was trained on)")
    distill.check_args(a)
    layers = check_soft(a, len(task.teacher.transformer.layers))
    rewards = parse_rewards(a.reward) if a.reward else []
    os.makedirs(a.out, exist_ok=True)
    run = task.setup(a, rt)
    for key, module in (("generator", run.gen), ("ema", run.ema), ("aux", run.aux)):
        module.load_state_dict(init[key], strict=True)
    if a.weight_decay > 0:                                               # the paper's long MaskBit run: AdamW 0.01
        run.opt_g = torch.optim.AdamW([p for p in run.gen.parameters() if p.requires_grad], lr=a.lr,
                                      weight_decay=a.weight_decay, eps=run.opt_g.defaults["eps"])
    with torch.random.fork_rng(devices=[]):                              # the heads' initialisation: from --seed
        torch.manual_seed(a.seed)
        run.disc = Discriminator(run.teacher.pos_emb.shape[-1], run.teacher.nclass, layers, a.d_hidden).to(rt.device)
    run.disc_call = ddp.wrap(run.disc, lambda m, states, labels, r: m(states, labels, r))
    run.opt_d = torch.optim.Adam(run.disc.parameters(), lr=a.lr_d, betas=(0.5, 0.999))
    if a.w_gan > 0:
        run.real_tokens, run.real_labels = real_tokens(task.tokenizer, task.teacher, a.data, a.cache, rt.device,
                                                       save=ddp.is_main())
    run.w_dimo = a.w_dimo                                                # --w-gan 0: Di[M]O alone, continued
    run.rewards = rewards
    run.extra_terms, run.after_step = ([gan_term], [discriminator_update]) if a.w_gan > 0 else ([], [])
    run.extra_terms += [reward_term] if run.rewards and a.w_reward > 0 else []
    run.extra_state = dict(disc=run.disc, opt_disc=run.opt_d)
    run.rng, run.step = torch.Generator().manual_seed(a.seed * 1000 + ddp.rank()), 0
    path = os.path.join(a.init, "metrics.json")                         # the Di[M]O run's final evaluation
    init_metrics = json.load(open(path)) if os.path.isfile(path) else {}
    a.init_temperature = init_metrics.get("gen_temperature", a.gen_temperature)  # as that run tuned it
    a.init_sigma = init_metrics.get("gen_sigma", a.sigma_init)
    run.reward_metric = (lambda images, labels: {"reward": mean_reward(run, images, labels)}) if rewards else None
    task.monitor = task.fid_monitor(a, a.init_temperature, a.monitor_n, run.reward_metric) \
        if a.monitor_n > 0 else None
    if resume is not None:
        distill.restore(run, resume)
    elif a.w_gan > 0:
        warm_up_discriminator(run)
    return task, run


def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.resume:                                                         # the saved run's settings win
        resume = load_checkpoint(os.path.join(a.resume, "checkpoint.pt"), "run checkpoint")
        saved = {**SAVED_BEFORE_FLAGS, **resume["args"]}
        s, flags = SimpleNamespace(**dict(saved, steps=a.steps or saved["steps"])), None
        s.device, s.out = a.device, a.resume
        init = load_checkpoint(os.path.join(s.init, "checkpoint.pt"), "--init run checkpoint")
    else:
        resume, (s, init, flags) = None, settings(a)
    task, run = setup(s, init, resume, flags)
    if resume is not None and ddp.is_main():
        print(f"resumed {s.out} at step {run.step} of {s.steps}")
        distill.note_new_total(s, resume["args"]["steps"])

    def evaluate():
        init_ema = copy.deepcopy(run.ema)                               # the Di[M]O generator we started from
        init_ema.load_state_dict(init["ema"], strict=True)

        m = task.evaluate(run, extra={"dimo": (init_ema, s.init_temperature, s.init_sigma)}, score=run.reward_metric)
        return dict(m, init=s.init, init_step=s.init_step, w_gan=s.w_gan, w_dimo=s.w_dimo, relax=s.relax,
                    r_max=s.r_max, d_backbone=s.d_backbone, d_layers=list(run.disc.layers), lr=s.lr, lr_d=s.lr_d,
                    reward=s.reward, w_reward=s.w_reward)
    distill.train_and_evaluate(run, evaluate)


if __name__ == "__main__":
    cli(main)
