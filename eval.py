"""Evaluation: how good are generated images, and how fast is one step compared with many?

Metrics of generated images against held-out data, all in the feature space of a small classifier trained on the
same data (``FeatureNet``; no Inception weights can be downloaded here, and Inception features say little about
32x32 toy shapes):

* FID: Frechet distance between Gaussians fitted to the 128-d penultimate features (Heusel et al., 2017).
  FID depends on the sample count: compare only numbers computed from the same number of samples.
* class consistency: accuracy of the classifier on the samples w.r.t. the class each was generated for.
* precision, recall, density, coverage with k = 5 nearest neighbours (Naeem et al., 2020).

For ImageNet-scale runs use ``--npz``: samples go to an ``.npz`` with ``arr_0`` uint8 [N, H, W, 3], the layout
the standard ADM evaluator (guided-diffusion's evaluations/evaluator.py) reads; run that evaluator yourself.
Every result is written as JSON next to its sample grid, with every sampler setting, the sample count and the seed.

Commands:
  python eval.py train-features --data toy --out assets/eval_features.pt   # the shipped feature network
  python eval.py tokenizer --teacher maskbit                               # PSNR + FID of reconstructions
  python eval.py teacher --teacher maskbit --steps-list 1,2,4,8,16,32      # FID / class consistency vs steps
  python eval.py teacher --teacher maskbit --steps-list 1,16 --cache assets/teacher_tokens   # shipped reference
  python eval.py speed --teacher maskbit                                   # one-step vs multi-step images/s
"""
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoints import FORMAT, cached, fingerprint, load_checkpoint, save_checkpoint
from config import ASSETS, PRESETS, ArgumentParser, UserError, check_range, cli, get_preset, parse_labels, runtime
from data import load_images, save_image_grid, to_uint8
from generator import generate, make_generator
from teacher import add_sampler_args, build_teacher, load_pair, sample, sampler_settings, tokens_to_images
from tokenizer import build_tokenizer

FEATURES = os.path.join(ASSETS, "eval_features.pt")
# Images per forward pass when sampling and scoring.  The batch fixes how the seeded noise is dealt out, so it is
# part of what a given seed's samples are: every figure in the README and docs/ was made at 500.  (Measured here,
# 2 cores: batch 64 runs the 16-step sampler 1.3x and the one-step generator with its decode 1.7x faster, but draws
# other samples, so changing it means measuring every table again.)
EVAL_BATCH = 500


# ----------------------------------------------------------------------------------------------------------------
# The feature network.
# ----------------------------------------------------------------------------------------------------------------
class FeatureNet(nn.Module):
    """A small CNN classifier; ``features`` (128-d, after global average pooling) are the FID space."""

    def __init__(self, nclass=10, width=32):
        super().__init__()

        def conv(cin, cout, stride=1):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())
        self.body = nn.Sequential(conv(3, width), conv(width, width, 2), conv(width, 2 * width),
                                  conv(2 * width, 2 * width, 2), conv(2 * width, 4 * width), conv(4 * width, 4 * width))
        self.head = nn.Linear(4 * width, nclass)
        self.nclass, self.width = nclass, width

    def features(self, images):
        return self.body(images * 2 - 1).mean((2, 3))                  # [B, 3, H, W] -> [B, 128]

    def forward(self, images):
        return self.head(self.features(images))


def load_features(path=FEATURES):
    ckpt = load_checkpoint(path, "feature network")
    if not (isinstance(ckpt, dict) and ckpt.get("kind") == "features"):
        raise UserError(f"'{path}' is not a feature-network checkpoint (make one with: python eval.py train-features)")
    net = FeatureNet(**ckpt["config"])
    net.load_state_dict(ckpt["model"], strict=True)
    return net.eval().requires_grad_(False), ckpt


def augment(x, gen):
    """Blur, noise and colour jitter, so that the classifier judges shapes rather than pixel-perfect edges."""
    b = x.shape[0]
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    w = torch.rand(b, 1, 1, 1, generator=gen)
    x = w * blurred + (1 - w) * x
    x = x * (1 + 0.2 * (torch.rand(b, 3, 1, 1, generator=gen) - 0.5))
    return (x + 0.04 * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def fit_classifier(net, opt, lr_at, augment_fn, images, labels, steps, batch_size, gen):
    """train_classifier's loop: steps of cross-entropy on random batches of images [n, 3, H, W], labels [n]."""
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        loss = F.cross_entropy(net(augment_fn(images[idx], gen)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def train_classifier(build, optimiser, lr_at, augment_fn, data, steps, batch_size, seed):
    """Cross-entropy training of the classifier build(nclass) with optimiser(parameters) on the train split of data,
    learning rate lr_at(step), images through augment_fn(x, gen); -> (net in eval mode, stats with the accuracy on
    the test split).  Shared by the feature network and rewards.py's reward classifier."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels, nclass = load_images(data, "train")
    test, test_labels, _ = load_images(data, "test")
    net = build(nclass)
    opt = optimiser(net.parameters())
    t0 = time.time()
    fit_classifier(net, opt, lr_at, augment_fn, images, labels, steps, batch_size, gen)
    net.eval()
    with torch.no_grad():
        acc = torch.cat([net(b).argmax(1) for b in test.split(500)]).eq(test_labels).float().mean().item()
    return net, dict(test_accuracy=round(acc, 4), steps=steps, data=data, seconds=round(time.time() - t0, 1))


FEATURES_LR = 2e-3                                                     # Adam, cosine decay to 0 over the steps


def train_features_parser():
    """eval.py train-features' options and defaults (also read by bench.py toy-world)."""
    parser = ArgumentParser(prog="eval.py train-features", description="train the evaluation feature network")
    parser.add_argument("--data", default="toy")
    parser.add_argument("--out", default=FEATURES)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main_train_features(argv):
    args = train_features_parser().parse_args(argv)
    check_range("--steps", args.steps, low=1)
    net, stats = train_classifier(FeatureNet, lambda params: torch.optim.Adam(params, lr=FEATURES_LR),
                                  lambda step: FEATURES_LR * 0.5 * (1 + np.cos(np.pi * step / args.steps)), augment,
                                  args.data, args.steps, args.batch_size, args.seed)
    save_checkpoint(dict(format=FORMAT, kind="features", config=dict(nclass=net.nclass, width=net.width),
                         model=net.state_dict(), stats=stats), args.out)
    print(f"wrote {args.out}: {stats}")


# ----------------------------------------------------------------------------------------------------------------
# Metrics.
# ----------------------------------------------------------------------------------------------------------------
def frechet_distance(a, b):
    """FID between feature sets a [n, d] and b [m, d] (float64; matrix square root by eigendecomposition)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.t()), torch.cov(b.t())
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.t()
    middle = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()  # tr sqrt(S_a^1/2 S_b S_a^1/2)
    return ((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * middle).item()


def prdc(real, fake, k=5):
    """Precision, recall, density, coverage (Naeem et al. 2020) with k-nearest-neighbour balls."""
    real, fake = real.double(), fake.double()
    radius_real = torch.cdist(real, real).kthvalue(k + 1, dim=1).values   # +1: the point itself is at distance 0
    radius_fake = torch.cdist(fake, fake).kthvalue(k + 1, dim=1).values
    d = torch.cdist(real, fake)                                         # [n_real, n_fake]
    inside = d < radius_real[:, None]
    return dict(precision=inside.any(0).double().mean().item(),
                recall=(d < radius_fake[None, :]).any(1).double().mean().item(),
                density=(inside.double().sum(0) / k).mean().item(),
                coverage=(d.min(1).values < radius_real).double().mean().item())


@torch.no_grad()
def embed(net, images, batch=EVAL_BATCH):
    """-> (features [n, 128], predicted classes [n])."""
    feats = torch.cat([net.features(b.float()) for b in images.split(batch)])
    return feats, net.head(feats).argmax(1)


def held_out_reference(data, n_ref, features):
    """-> (feature network, its checkpoint, the held-out images' features)."""
    net, ckpt = load_features(features)
    ref, _, nclass = load_images(data, "test", n_ref if data == "toy" else None)
    if nclass != net.nclass:
        raise UserError(f"feature network '{features}' has {net.nclass} classes but the data has {nclass}")
    return net, ckpt, embed(net, ref)[0]


# The toy reference (held-out images drawn from fixed seeds, 4 s to draw and embed) computed once per process and
# feature file (its path, mtime and size): runs that evaluate several times in one process (the tests) reuse it.
TOY_REFERENCE = {}


class Evaluator:
    """Holds the feature network and the reference (held-out) features; ``__call__`` scores a set of images."""

    def __init__(self, data="toy", n_ref=5000, features=FEATURES):
        stat = os.stat(features) if data == "toy" and os.path.isfile(features) else None
        key = (os.path.abspath(features), stat.st_mtime_ns, stat.st_size, n_ref) if stat else None
        found = TOY_REFERENCE.get(key) or held_out_reference(data, n_ref, features)
        if key is not None:
            TOY_REFERENCE[key] = found
        self.net, ckpt, self.ref_features = found
        self.info = dict(data=data, n_reference=len(self.ref_features), features=os.path.relpath(features),
                         feature_test_accuracy=ckpt["stats"]["test_accuracy"])

    def __call__(self, images, labels):
        feats, pred = embed(self.net, images.cpu())
        out = dict(n=len(feats), fid=frechet_distance(feats, self.ref_features),
                   class_acc=pred.eq(labels.cpu()).float().mean().item())
        out.update(prdc(self.ref_features[:len(feats)], feats))       # PRDC wants equally many real and fake
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def write_result(out_dir, name, result, images=None, npz=False):
    """results -> out_dir/name.json; images -> out_dir/name.png (first 64) and optionally name.npz (ADM layout)."""
    os.makedirs(out_dir, exist_ok=True)
    if images is not None:
        save_image_grid(images[:64], os.path.join(out_dir, name + ".png"))
        if npz:
            np.savez(os.path.join(out_dir, name + ".npz"), arr_0=to_uint8(images))
    with open(os.path.join(out_dir, name + ".json"), "w") as f:
        json.dump(result, f, indent=1)


# ----------------------------------------------------------------------------------------------------------------
# Commands on a teacher / tokenizer pair.
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def teacher_tokens(teacher, labels, settings, seed, batch=EVAL_BATCH):
    """Tokens [n, N, S] from the multi-step sampler, deterministic in seed (one generator across the batches)."""
    gen = torch.Generator(labels.device).manual_seed(seed)
    return torch.cat([sample(teacher, lab, generator=gen, **settings) for lab in labels.split(batch)])


@torch.no_grad()
def decode(model, tokenizer, tokens, batch=EVAL_BATCH):
    """Tokens [n, N, S] -> images [n, 3, H, W] in [0, 1], a batch at a time."""
    return torch.cat([tokens_to_images(model, tokenizer, t) for t in tokens.split(batch)])


def teacher_images(teacher, tokenizer, labels, settings, seed, batch=EVAL_BATCH):
    """Images [n, 3, H, W] in [0, 1] from the multi-step sampler, deterministic in seed."""
    return decode(teacher, tokenizer, teacher_tokens(teacher, labels, settings, seed, batch), batch)


# The teacher's reference samples are deterministic: the same weights, sampler settings, labels, seed, batch, device
# type, autocast and torch version give the same tokens, bit for bit (also across CPUs).  So they are cached exactly,
# as tokens under a key of all of these (decoding and scoring stay local: a changed tokenizer, feature network or
# held-out set is used as it is).  REFERENCE ships the bundled teacher's default references (2000 samples: seed 0 at
# its sampler and at one step, seeds 1 and 2 at its sampler, the sigma tuning's draws); tests/test_cli.py checks
# their keys and samples seed 0's first batches again to compare them bit for bit.
REFERENCE = os.path.join(ASSETS, "teacher_tokens")


def reference_key(teacher, labels, settings, seed, amp=False):
    """-> (sha256 hex, the settings it covers besides the teacher's weights and the labels)."""
    what = dict(sampler=settings, seed=seed, batch=EVAL_BATCH, device=labels.device.type, amp=amp,
                torch=str(torch.__version__))
    return fingerprint(json.dumps(what, sort_keys=True), labels, teacher), what


def reference_tokens(teacher, labels, settings, seed, cache="", amp=False):
    """The teacher's samples for (labels, settings, seed): -> (tokens [n, N, S], the file they came from or
    'sampled').  Read from cache or REFERENCE when a file there has the key; else sampled and written to cache.
    cache '' reads and writes nothing."""
    key, what = reference_key(teacher, labels, settings, seed, amp)
    name = f"teacher_tokens-{key[:16]}.pt"
    saved = cached((cache, REFERENCE), name, key, "teacher token cache") if cache else None
    if saved is not None:
        return saved["tokens"].long().to(labels.device), saved["path"]
    tokens = teacher_tokens(teacher, labels, settings, seed)
    if cache:
        small = torch.uint8 if teacher.mask_id < 256 else torch.int16  # MaskGIT's head can sample its mask id 1024
        save_checkpoint(dict(key=key, settings=what, n=len(labels), tokens=tokens.cpu().to(small)),
                        os.path.join(cache, name))
    return tokens, "sampled"


def timed(fn, device):
    """(seconds, fn()), with CUDA synchronised around the call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


@torch.no_grad()
def teacher_images_per_s(teacher, settings, batch_size=64):
    """The machine's speed reference that `eval.py speed` prints (teacher images/s at its sampler on one batch of
    64), timed once after a small warm-up: distill.py records it beside its wall-clock times."""
    device = teacher.pos_emb.device
    run = lambda n: sample(teacher, torch.arange(n, device=device) % teacher.nclass,
                           generator=torch.Generator(device).manual_seed(0), **settings)
    run(8)
    return round(batch_size / timed(lambda: run(batch_size), device)[0], 2)


def pair_args(parser):
    parser.add_argument("--teacher", default="maskbit", help="preset (python config.py lists them)")
    parser.add_argument("--teacher-ckpt", help="teacher weights (default: the bundled ones, if any)")
    parser.add_argument("--tokenizer-ckpt", help="tokenizer weights")
    parser.add_argument("--data", default="toy", help="held-out reference data: 'toy' or a folder")
    parser.add_argument("--features", default=FEATURES, help="feature network (python eval.py train-features)")
    parser.add_argument("--n", type=int, default=2000, help="samples per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/eval", help="folder for JSON results and PNG grids")
    parser.add_argument("--npz", action="store_true", help="also write samples as .npz for the ADM evaluator")


def main_tokenizer(argv):
    parser = ArgumentParser(prog="eval.py tokenizer", description="reconstruction PSNR and FID (the floor)")
    pair_args(parser)
    args = parser.parse_args(argv)
    check_range("--n", args.n, low=2)
    _, tokenizer, preset = load_pair(args.teacher, args.teacher_ckpt, args.tokenizer_ckpt)
    evaluator = Evaluator(args.data, features=args.features)
    images, labels, _ = load_images(args.data, "test", args.n if args.data == "toy" else None, seed=1)
    with torch.no_grad():
        recon = torch.cat([tokenizer.indices_to_images(tokenizer.images_to_indices(b)).clamp(0, 1)
                           for b in images.split(250)])
    mse = ((recon - images) ** 2).flatten(1).mean(1)
    result = dict(teacher=preset, psnr=round((10 * torch.log10(1 / mse)).mean().item(), 2),
                  recon=evaluator(recon, labels), data_itself=evaluator(images, labels), **evaluator.info)
    write_result(args.out, "tokenizer", result, torch.stack([images[:32], recon[:32]], 1).flatten(0, 1), args.npz)
    print(json.dumps(result))


def main_teacher(argv):
    parser = ArgumentParser(prog="eval.py teacher", description="teacher FID / class consistency vs steps")
    pair_args(parser)
    add_sampler_args(parser)
    parser.add_argument("--steps-list", default="1,2,4,8,16,32", help="comma-separated step counts")
    parser.add_argument("--cache", default="runs/cache", help="exact cache of the samples (reference_tokens; '': "
                        "none); --cache assets/teacher_tokens --steps-list 1,16 writes the shipped reference, "
                        "--steps-list 16 --seed 1 and --seed 2 its tuning draws")
    args = parser.parse_args(argv)
    check_range("--n", args.n, low=2)
    rt = runtime(args.device)
    teacher, tokenizer, preset = load_pair(args.teacher, args.teacher_ckpt, args.tokenizer_ckpt)
    teacher, tokenizer = teacher.to(rt.device), tokenizer.to(rt.device)
    evaluator = Evaluator(args.data, features=args.features)
    labels = parse_labels(None, args.n, teacher.nclass).to(rt.device)
    rows = []
    for steps in [int(s) for s in args.steps_list.split(",")]:
        args.steps = steps
        settings = sampler_settings(args, preset)
        t0 = time.time()
        tokens, source = reference_tokens(teacher, labels, settings, args.seed, args.cache)
        images = decode(teacher, tokenizer, tokens)
        row = dict(teacher=preset, seed=args.seed, **settings, **evaluator(images, labels),
                   seconds=round(time.time() - t0, 1), samples=source, **evaluator.info)
        write_result(args.out, f"teacher_{steps}steps", row, images, args.npz)
        rows.append(row)
        print(f"steps {steps:3d}  FID {row['fid']:8.3f}  class acc {row['class_acc']:.3f}  "
              f"precision {row['precision']:.3f}  recall {row['recall']:.3f}  ({row['seconds']} s)")
    with open(os.path.join(args.out, "teacher_steps.json"), "w") as f:
        json.dump(rows, f, indent=1)


def main_speed(argv):
    """Teacher (multi-step, CFG) vs one-step generator on the same batch, alternately timed in one run.
    The tokenizer decode, identical for both, is timed separately and not included."""
    parser = ArgumentParser(prog="eval.py speed", description="images/s of the teacher and the one-step generator")
    parser.add_argument("--teacher", default="maskbit")
    parser.add_argument("--teacher-ckpt")
    parser.add_argument("--tokenizer-ckpt")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    add_sampler_args(parser)
    args = parser.parse_args(argv)
    check_range("--batch-size", args.batch_size, low=1)
    check_range("--repeats", args.repeats, low=1)
    rt = runtime(args.device)
    teacher, tokenizer, preset = load_pair(args.teacher, args.teacher_ckpt, args.tokenizer_ckpt, verbose=False)
    settings = sampler_settings(args, preset)
    teacher, tokenizer = teacher.to(rt.device), tokenizer.to(rt.device)
    gen = make_generator(teacher).eval()
    labels = torch.arange(args.batch_size, device=rt.device) % teacher.nclass

    run_teacher = lambda: sample(teacher, labels, generator=torch.Generator(rt.device).manual_seed(0), **settings)
    init = get_preset(preset)["distill"]                               # the generator's inference settings
    run_gen = lambda: generate(gen, labels, init["r_init"], init["sigma_init"], init["gen_temperature"],
                               torch.Generator(rt.device).manual_seed(0))
    run_teacher(), run_gen()                                            # warm-up
    t_teacher, t_gen = [], []
    for _ in range(args.repeats):                                       # alternate, so both see the same machine
        t_teacher.append(timed(run_teacher, rt.device)[0])
        t_gen.append(timed(run_gen, rt.device)[0])
    tokens = run_gen()
    t_decode = float(np.median([timed(lambda: tokens_to_images(teacher, tokenizer, tokens), rt.device)[0]
                                for _ in range(args.repeats)]))        # timed alone: no difference to go negative
    tt, tg = float(np.median(t_teacher)), float(np.median(t_gen))
    passes = 1 if settings["guidance"] == 1 else 2
    print(json.dumps(dict(teacher=preset, batch_size=args.batch_size, teacher_steps=settings["steps"],
                          cfg_passes=passes, teacher_images_per_s=round(args.batch_size / tt, 2),
                          generator_images_per_s=round(args.batch_size / tg, 2), speedup=round(tt / tg, 2),
                          physical_limit=settings["steps"] * passes,
                          decode_images_per_s=round(args.batch_size / t_decode, 2), device=str(rt.device),
                          repeats=args.repeats)))


def memory_table(preset):
    """Bytes of every model held during distillation, from parameter counts (models built on the meta device)."""
    p = get_preset(preset)
    with torch.device("meta"):
        teacher = build_teacher(p["family"], p["generator"])
        tokenizer = build_tokenizer(p["family"], p["tokenizer"])
        gen = make_generator(teacher)
    n_all = sum(t.numel() for t in teacher.parameters())
    n_train = sum(t.numel() for t in gen.parameters() if t.requires_grad)
    gb = 1e9
    rows = dict(teacher_fp32=4 * n_all / gb, teacher_bf16=2 * n_all / gb, generator=4 * n_all / gb,
                generator_grads=4 * n_train / gb, generator_adam=8 * n_train / gb, auxiliary=4 * n_all / gb,
                auxiliary_grads=4 * n_train / gb, auxiliary_adam=8 * n_train / gb, ema=4 * n_all / gb,
                tokenizer=4 * sum(t.numel() for t in tokenizer.parameters()) / gb)
    total = sum(v for k, v in rows.items() if k != "teacher_bf16")
    saved = rows["ema"] + rows["teacher_fp32"] - rows["teacher_bf16"]   # EMA on CPU, frozen teacher in bf16
    return dict(preset=preset, parameters=n_all, trainable=n_train, gb={k: round(v, 3) for k, v in rows.items()},
                total_gb_fp32=round(total, 3), total_gb_bf16_teacher_ema_on_cpu=round(total - saved, 3),
                note="weights and optimiser states only; activations grow with --batch-size (use --grad-accum)")


def main_memory(argv):
    """Computed memory per component for every preset; measured peak RSS of short toy runs on this machine."""
    parser = ArgumentParser(prog="eval.py memory", description="memory of distillation per preset")
    parser.add_argument("--measure", action="store_true", help="also run short toy distillations and measure RSS")
    args = parser.parse_args(argv)
    for name in [n for n in PRESETS if n != "maskbit" and PRESETS[n]["family"] in ("maskbit", "maskgit")]:
        print(json.dumps(memory_table(name)))   # text-to-image: python bench.py full-size --presets meissonic
    if args.measure:
        here = os.path.dirname(os.path.abspath(__file__))
        base = [sys.executable, "-c", "import torch, distill"]
        runs = {"python+torch": base,
                "toy-vocab": [sys.executable, "distill.py", "--teacher", "toy-vocab", "--steps", "20",
                              "--out", "/tmp/dimo-memory-toy-vocab"],
                "maskbit-toy": [sys.executable, "distill.py", "--teacher", "maskbit", "--steps", "20", "--eval-n",
                                "200", "--tune-temperature", "", "--out", "/tmp/dimo-memory-maskbit-toy"]}
        for name, cmd in runs.items():                                 # each run in a fresh child: its own peak
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            subprocess.run(cmd, cwd=here, check=True, capture_output=True)
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            print(json.dumps(dict(run=name, peak_rss_mib=round(peak / 1024, 1),
                                  note="" if peak > before else "not above an earlier child's peak")))


def main(argv):
    """python eval.py {train-features,tokenizer,teacher,speed,memory} ..."""
    commands = {"train-features": main_train_features, "tokenizer": main_tokenizer, "teacher": main_teacher,
                "speed": main_speed, "memory": main_memory}
    if not argv or argv[0] not in commands:
        raise UserError(f"usage: python eval.py {{{','.join(commands)}}} [--help]")
    commands[argv[0]](argv[1:])


if __name__ == "__main__":
    cli(lambda: main(sys.argv[1:]))
