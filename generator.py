"""Di[M]O's one-step generator: a copy of the teacher that maps a random, partially masked sequence to all tokens.

A masked-diffusion teacher starts from an all-mask sequence, which carries no randomness: a one-step copy fed that
constant input could only ever produce one set of logits and collapses.  Di[M]O (arXiv 2503.15457, Sec. 4.3) gives
the generator entropy through its input:

1. Token initialisation: a fraction ``r_init`` of the M = N*S entries (exactly round(M * r_init)) is the mask id,
   the rest are uniform random ids (``token_init``).  r_init = 0.6 was best for MaskGIT; Meissonic used 0.5.
   r_init may also be drawn per batch from a range (``--r-init 0.1:0.9``).
2. Embedding perturbation, variance preserving: e_hat = sqrt(1 - sigma^2) e + sigma eps, eps ~ N(0, I), on the
   embeddings of the N image positions (not the class token), generator only (``perturb``).  sigma_init = 0.1
   (MaskGIT), 0.3 (Meissonic); 0.06 for the toy pair (ours, issue 26); it may be warmed up linearly from 0.
   Where e is, per teacher: MaskGIT: the ``tok_emb`` rows, exactly where Di[M]O adds it.  MaskBit (our choice,
   since MaskBit has no embedding table): the *projected* bit features e = input_proj(bits).  ``input_proj`` is
   MaskBit's embedding (frozen like ``tok_emb``), the transformer sees e, and noise there spans all D dimensions;
   noise on the bit vector itself would only reach a bits-dimensional subspace of the D-dimensional input.
3. Frozen embedding and output layers (``make_generator``): the perturbation acts on a fixed embedding space and
   training is more stable (Di[M]O freezes tok_emb/pos_emb/bias; for MaskBit input_proj, class_emb, pos_emb and
   the head).

Then one forward pass gives logits [B, N, S, V] for every position (the random visible tokens are not kept), and
tokens are drawn from softmax(logits / temperature); the inference temperature is tuned per checkpoint, as the
paper does.  The inference sigma may differ from the training sigma_init (ours, like a GAN's truncation trick:
less input noise, sharper images, less diversity); a run's evaluation tunes it to a recall floor
(``tasks.ImageTask.tune_sampling``) and ``load_run`` returns it as the settings' 'gen_sigma'.  Every function takes
an explicit ``torch.Generator``: same seed, same device, same samples.  An explicit ``x_init`` can be passed
(interpolation, reconstruction from real tokens, test-time optimisation), and so can the perturbed embeddings
``e_init`` themselves.

Shapes: B batch, N tokens, S splits, V classes per split, D width.  Run ``python generator.py`` for a demo.
"""
import copy
import json
import math
import os

import torch

import ddp
from checkpoints import load_checkpoint
from config import ArgumentParser, UserError, check_range, get_preset, parse_labels, runtime
from data import save_image_grid
from maskbit import LFQBert
from teacher import load_meissonic, load_pair, micro_conds, prompt_condition, text_to_image_folder, tokens_to_images


def token_init(model, batch, r_init, generator=None, device="cpu"):
    """x_init [B, N, S]: exactly round(M r_init) of the M = N*S entries masked per sample, the rest uniform ids."""
    m = model.seq_len * model.splits
    count = round(m * r_init)
    x = torch.randint(0, model.mask_id, (batch, m), generator=generator, device=device)  # ids below the mask id
    rank = torch.rand(batch, m, generator=generator, device=device).argsort(-1).argsort(-1)
    x = torch.where(rank < count, torch.full_like(x, model.mask_id), x)
    return x.reshape(batch, model.seq_len, model.splits)               # [B, M] -> [B, N, S]


def draw_r_init(r_init, generator=None):
    """r_init is a float, or a (low, high) pair to draw one value per batch uniformly from."""
    if isinstance(r_init, (tuple, list)):
        low, high = r_init
        return low + (high - low) * torch.rand((), generator=generator).item()
    return r_init


def sigma_at(sigma_init, step, warmup=0):
    """sigma_init, or a linear warm-up from 0 to sigma_init over ``warmup`` steps."""
    return sigma_init if warmup <= 0 else sigma_init * min(1.0, step / warmup)


def perturb(e, sigma, generator=None):
    """Variance-preserving Gaussian perturbation e_hat = sqrt(1 - sigma^2) e + sigma eps (Di[M]O Sec. 4.3)."""
    if sigma == 0:
        return e
    eps = torch.randn(e.shape, generator=generator, device=e.device, dtype=e.dtype)
    return math.sqrt(1 - sigma ** 2) * e + sigma * eps


def init_embeddings(model, x_init, sigma, generator=None):
    """The generator's input e_init [B, N, D]: embeddings of x_init, perturbed."""
    return perturb(model.input_embed(model.features(x_init)), sigma, generator)


def generator_logits(model, labels, x_init=None, sigma=0.0, generator=None, e_init=None):
    """One forward pass: logits [B, N, S, V] from x_init (perturbed by sigma) or from given embeddings e_init."""
    if e_init is None:
        e_init = init_embeddings(model, x_init, sigma, generator)
    return model.forward_embeddings(e_init, labels)


def sample_tokens(logits, temperature=1.0, generator=None):
    """tokens [B, N, S] ~ softmax(logits / temperature), one categorical draw per entry."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])                           # [B, N, S, V] -> [B*N*S, V]
    return torch.multinomial(flat, 1, generator=generator).reshape(logits.shape[:-1])


@torch.no_grad()
def generate(model, labels, r_init=0.6, sigma_init=0.1, temperature=1.0, generator=None, x_init=None):
    """Sample tokens [B, N, S] in one step (the inference path; no CFG, the generator is always conditional)."""
    if x_init is None:
        x_init = token_init(model, labels.shape[0], draw_r_init(r_init, generator), generator, labels.device)
    logits = generator_logits(model, labels, x_init, sigma_init, generator)
    return sample_tokens(logits, temperature, generator)


def make_generator(teacher):
    """A trainable copy of the teacher with its embedding and output layers frozen."""
    model = copy.deepcopy(teacher).train().requires_grad_(True)
    for p in model.frozen_parameters():
        p.requires_grad_(False)
    return model


def parse_r_init(text):
    """'0.6' -> 0.6; '0.1:0.9' -> (0.1, 0.9).  Values must lie in [0, 1)."""
    try:
        values = [float(v) for v in str(text).split(":")]
    except ValueError:
        raise UserError(f"--r-init '{text}' must be a number like 0.6 or a range like 0.1:0.9") from None
    if len(values) not in (1, 2):
        raise UserError(f"--r-init '{text}' must be a number like 0.6 or a range like 0.1:0.9")
    for v in values:
        check_range("--r-init", v, 0, 1, high_open=True)
    if len(values) == 2 and values[0] > values[1]:
        raise UserError(f"--r-init range '{text}' must be low:high")
    return values[0] if len(values) == 1 else tuple(values)


def load_run(folder, device="cpu", temperature=None, sigma=None):
    """A distill.py or soft_refine.py run folder -> (EMA generator in eval mode, tokenizer, the run's settings,
    its checkpoint, the sampling temperature, preset name).  The temperature: the one given, else the one the
    run's evaluation tuned, else the run's --gen-temperature (0 counts as given, and is then rejected).  The
    settings' 'gen_sigma', the inference sigma, the same way: given, tuned, else the run's sigma_init.  A text
    run's settings also hold 'text_side': (CLIP tokenizer, text encoder, micro-conditions); its tokenizer is the VQ
    model."""
    ckpt = load_checkpoint(os.path.join(folder, "checkpoint.pt"), "run checkpoint")
    run = ckpt["args"]
    if run["teacher"] == "toy-vocab":
        raise UserError("a toy-vocab run has no images; its samples are in samples.npy (distill.py --save-samples)")
    metrics_path = os.path.join(folder, "metrics.json")
    metrics = json.load(open(metrics_path)) if os.path.isfile(metrics_path) else {}
    tuned, tuned_sigma = metrics.get("gen_temperature"), metrics.get("gen_sigma")
    if run["teacher"] != "toy-vocab" and get_preset(run["teacher"])["family"] == "meissonic":   # text_task.py's run
        preset, t2i_folder = text_to_image_folder(run["teacher"], run["teacher_ckpt"], verbose=False)
        p = get_preset(preset)
        teacher, tokenizer, tok, enc = load_meissonic(t2i_folder, p["prompt"]["resolution"], verbose=False)
        run = dict(run, text_side=(tok, enc, micro_conds(p["prompt"]["resolution"], p["prompt"]["aesthetic"])))
    else:
        teacher, tokenizer, preset = load_pair(run["teacher"], run["teacher_ckpt"], run["tokenizer_ckpt"], False)
    gen = make_generator(teacher)
    gen.load_state_dict(ckpt["ema"], strict=True)
    temperature = next(t for t in (temperature, tuned, run["gen_temperature"]) if t is not None)
    check_range("--temperature", temperature, low=0, low_open=True)
    sigma = next(s for s in (sigma, tuned_sigma, run["sigma_init"]) if s is not None)
    run = dict(run, gen_sigma=check_range("--sigma", sigma, 0, 1, high_open=True))
    return gen.eval().to(device), tokenizer.to(device), run, ckpt, temperature, preset


@torch.no_grad()
def one_step_images(model, tokenizer, labels, r_init, sigma_init, temperature, seed, batch, device=None):
    """Images [n, 3, H, W] of labels [n], batch by batch from one CPU generator seeded with seed, decoded on
    device (default: the model's): a run's evaluation and ``bench.py draws`` draw the same images from it."""
    g, out = torch.Generator().manual_seed(seed), []
    for lab in labels.split(batch):
        tokens = generate(model, lab.to(ddp.model_device(model)), draw_r_init(r_init, g), sigma_init, temperature, g)
        out.append(tokens_to_images(model, tokenizer, tokens.to(device or tokens.device)))
    return torch.cat(out)


def main_sample(argv=None):
    """One-step samples of a distilled generator (the EMA weights of a distill.py run) as a PNG grid + JSON."""
    parser = ArgumentParser(prog="generator.py sample", description="sample a distilled one-step generator")
    parser.add_argument("--run", required=True, help="a distill.py output folder (holds checkpoint.pt)")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--labels", help="class ids, comma separated (default: 0, 1, 2, ... cycled)")
    parser.add_argument("--prompt", action="append", help="a text run: a prompt (repeat the flag; cycled to --n)")
    parser.add_argument("--temperature", type=float, help="default: the run's tuned temperature")
    parser.add_argument("--sigma", type=float, help="inference sigma (default: the run's tuned one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="grid.png")
    args = parser.parse_args(argv)
    check_range("--n", args.n, low=1)
    rt = runtime(args.device)
    gen, tokenizer, run, ckpt, temperature, preset = load_run(args.run, rt.device, args.temperature, args.sigma)
    if "text_side" in run:                                              # prompts: the generator is never guided
        if not args.prompt or args.labels:
            raise UserError(f"{args.run} is a text-to-image run: pass --prompt \"...\" (not --labels)")
        tok, enc, micro = run["text_side"]
        shown = [args.prompt[i % len(args.prompt)] for i in range(args.n)]
        labels = prompt_condition(tok, enc.to(rt.device), shown, "", micro, counter=False)
    else:
        if args.prompt:
            raise UserError(f"{args.run} is a class-to-image run: pass --labels, not --prompt")
        shown = parse_labels(args.labels, args.n, gen.nclass).to(rt.device)
        labels = shown
    g = torch.Generator(rt.device).manual_seed(args.seed)
    tokens = generate(gen, labels, draw_r_init(run["r_init"], g), run["gen_sigma"], temperature, g)
    save_image_grid(tokens_to_images(gen, tokenizer, tokens), args.out)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(dict(run=args.run, step=ckpt["step"], teacher=preset, n=args.n,
                       labels=shown if isinstance(shown, list) else shown.tolist(),
                       seed=args.seed, temperature=temperature, r_init=run["r_init"],
                       sigma=run["gen_sigma"]), f, indent=1)
    print(f"wrote {args.out} ({args.n} one-step samples, temperature {temperature}, sigma {run['gen_sigma']})")


def main(argv):
    """python generator.py sample --run DIR ... samples a distilled generator; without arguments, a CPU demo."""
    if argv[:1] == ["sample"]:
        return main_sample(argv[1:])
    torch.manual_seed(0)
    teacher = LFQBert(img_size=32, hidden_dim=64, codebook_size=4096, codebook_splits=2, depth=2, heads=4,
                      mlp_dim=128, nclass=10, input_stride=4).eval()
    gen_model = make_generator(teacher)
    g = torch.Generator().manual_seed(0)
    x_init = token_init(gen_model, 4, 0.6, g)
    print("x_init", tuple(x_init.shape), "masked fraction", (x_init == gen_model.mask_id).float().mean().item())
    tokens = generate(gen_model, torch.arange(4), generator=torch.Generator().manual_seed(1))
    print("one-step tokens", tuple(tokens.shape), "frozen tensors:", len(gen_model.frozen_parameters()),
          "trainable:", sum(p.requires_grad for p in gen_model.parameters()))


if __name__ == "__main__":
    import sys

    from config import cli
    cli(lambda: main(sys.argv[1:]))
