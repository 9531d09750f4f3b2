"""Test-time search for one-step generators: best-of-N and test-time embedding optimisation (Soft-Di[M]O Sec. 2.6).

A one-step generator's randomness sits in its input: x_init (token initialisation) and the Gaussian perturbation of
its embeddings, together e_init [B, N, D] (generator.py).  With soft embeddings the image is a differentiable
function of e_init, so e_init can be optimised per sample, the weights frozen (TTEO, like ReNO's noise
optimisation):

    e* = argmax_e  R(Dec(Emb_Dec(softmax(z_theta(e) / T))), c)      by SGD, lr 0.2, 2-4 iterations (the paper's)

and combined with best-of-N ("TTS"): for each image draw N candidates' e_init, optimise each, and keep the best by a
selection score (the paper: CLIP + ImageReward + HPS + PickScore; here ``--select``, default the same rewards as
``--reward``).  The final image is decoded from *hard* tokens sampled at the run's temperature, as plain sampling
does; the selection judges that final image.

Our choices, where the paper is silent: the soft path judges softmax(z / T_soft) with the run's soft temperature
(the toy generator is not peaked, see soft_refine.py); each image's SGD step is its own (the loss is the sum, not
the mean, over the batch, so the step does not depend on the batch size); candidate c of chunk k draws from its own
random stream (candidate 0 of chunk 0 is ``--seed`` itself), and a candidate's final hard draw uses the same stream
whatever the number of iterations, so N = 1 with 0 iterations is plain one-step sampling bit for bit and a
difference between iteration counts is due to e_init alone.

Commands (``python tteo.py`` alone: a demo in seconds):
  python tteo.py train-reward --data toy --out assets/reward_classifier.pt      # the toy reward (rewards.py)
  python tteo.py sample --run runs/soft --n 64 --best-of 4 --iters 4 --lr 0.2 --reward classifier --out grid.png
  python tteo.py table --run runs/distill --best-of 1,2,4,8 --iters 0,2,4 --out runs/tteo_table_distill.json

Compute is counted, not estimated: per image, generator forward = N (iters + 1), generator backward = N iters,
decoder forward = N (iters + 1) (iters soft, 1 hard), decoder backward = N iters, reward passes likewise.
Shapes: B batch, N tokens, S splits, V classes per split, D width, C candidates (the N of best-of-N).
"""
import json
import os
import time
from collections import Counter

import numpy as np
import torch

from config import PRESETS, ArgumentParser, UserError, check_range, cli, parse_labels, runtime
from data import save_image_grid
from eval import Evaluator
from generator import draw_r_init, init_embeddings, load_run, make_generator, sample_tokens, token_init
from rewards import main_train, parse_rewards, score
from soft_refine import soft_images
from teacher import load_pair, tokens_to_images


# ----------------------------------------------------------------------------------------------------------------
# The building blocks: one candidate's stream, one TTEO step, the final hard image.
# ----------------------------------------------------------------------------------------------------------------
def candidate_rng(seed, chunk, candidate, device="cpu"):
    """Candidate c of chunk k draws from its own stream; (0, 0) is the plain seed (plain sampling's stream)."""
    if (chunk, candidate) == (0, 0):
        return torch.Generator(device).manual_seed(seed)
    derived = np.random.SeedSequence([seed, chunk, candidate]).generate_state(1)[0]
    return torch.Generator(device).manual_seed(int(derived))


def tteo_step(gen, tokenizer, e, labels, rewards, lr, soft_temperature, counts):
    """One SGD step on the embeddings e [B, N, D]: e <- e + lr dR/de, R the reward of the soft-decoded image.
    -> (new e (detached), logits z [B, N, S, V] of the old e (detached), rewards of the soft images [B])."""
    e = e.detach().requires_grad_(True)
    z = gen.forward_embeddings(e, labels)                              # [B, N, S, V]
    images = soft_images(tokenizer, torch.softmax(z.float() / soft_temperature, -1))  # Dec(Emb_Dec(z)) [B, 3, H, W]
    total, _ = score(rewards, images, labels)
    grad, = torch.autograd.grad(total.sum(), e)                        # per-image ascent: the sum, not the mean
    counts.update(generator_forward=1, generator_backward=1, decoder_forward=1, decoder_backward=1, reward=1)
    return (e + lr * grad).detach(), z.detach(), total.detach()        # Soft-Di[M]O Sec. 2.6, SGD lr 0.2


@torch.no_grad()
def hard_images(gen, tokenizer, z, temperature, rng_state):
    """The final image: tokens ~ softmax(z / temperature) from the candidate's saved stream, decoded -> [B, 3, H, W]
    in [0, 1] (on the CPU), exactly as plain one-step sampling makes it."""
    g = torch.Generator(z.device)
    g.set_state(rng_state)
    return tokens_to_images(gen, tokenizer, sample_tokens(z, temperature, g))


# ----------------------------------------------------------------------------------------------------------------
# The search.
# ----------------------------------------------------------------------------------------------------------------
def search(gen, tokenizer, labels, rewards, select, s, best_of, iters, lr, seed, chunk=0, record=None, keep=None):
    """Best-of-N with TTEO for one chunk of labels [B].  s: the run's sampling settings (r_init, sigma_init,
    temperature, soft_temperature).  record: the iteration counts (<= iters) whose hard images are drawn and scored,
    keep: the candidate counts (<= best_of) whose best-of is returned; by default only (best_of, iters).  Every
    (n, k) cell is what a search with best_of = n, iters = k gives: candidates and iterations are prefixes.
    -> (dict(cells {(n, k): dict(images [B, 3, H, W], score [B], choice [B])}, before: candidate 0 at 0
    iterations, i.e. plain one-step sampling: dict(images, reward [B])), counts of the search's passes)."""
    record, keep = sorted(set(record or [iters])), set(keep or [best_of])
    counts, best, cells, before = Counter(), {}, {}, None
    for c in range(best_of):
        g = candidate_rng(seed, chunk, c, labels.device)
        x_init = token_init(gen, labels.shape[0], draw_r_init(s["r_init"], g), g, labels.device)
        e = init_embeddings(gen, x_init, s["sigma_init"], g)           # e_init [B, N, D]
        state = g.get_state()                                          # the final hard draw's stream
        for k in range(iters + 1):
            if k < iters:                                              # z: the logits before this step
                e, z, _ = tteo_step(gen, tokenizer, e, labels, rewards, lr, s["soft_temperature"], counts)
            else:
                with torch.no_grad():
                    z = gen.forward_embeddings(e, labels)
                counts.update(generator_forward=1)
            if k in record or (c == 0 and k == 0):
                images = hard_images(gen, tokenizer, z, s["temperature"], state)
                counts.update(["decoder_forward" if k in record else "before_decoder_forward"])
                if c == 0 and k == 0:
                    before = dict(images=images, reward=score(rewards, images, labels.cpu())[0])
            if k in record:
                value = score(select, images, labels.cpu())[0]         # the selection judges the final image
                counts.update(reward=1)
                if k not in best:
                    best[k] = dict(images=images, score=value, choice=torch.zeros_like(value, dtype=torch.long))
                else:
                    better = value > best[k]["score"]                  # ties keep the earlier candidate
                    best[k] = dict(images=torch.where(better[:, None, None, None], images, best[k]["images"]),
                                   score=torch.where(better, value, best[k]["score"]),
                                   choice=torch.where(better, c, best[k]["choice"]))
        if c + 1 in keep:
            cells.update({(c + 1, k): best[k] for k in record})
    return dict(cells=cells, before=before), counts


def sampling_settings(run, temperature, preset, args):
    """The run's r_init and inference sigma (as 'sigma_init': the tuned one, else the training one), the sampling
    temperature, and the soft temperature: --soft-temperature, else the run's (a soft_refine.py run), else the
    preset's (0 counts as given, and is then rejected)."""
    soft = next(t for t in (args.soft_temperature, run.get("soft_temperature"),
                            PRESETS[preset]["soft"]["soft_temperature"]) if t is not None)
    check_range("--soft-temperature", soft, low=0, low_open=True)
    return dict(r_init=run["r_init"], sigma_init=run["gen_sigma"], temperature=temperature,
                soft_temperature=soft)


def common_args(p):
    p.add_argument("--run", required=True, help="a distill.py or soft_refine.py run folder")
    p.add_argument("--reward", default="classifier", help="NAME[:WEIGHT],... the rewards TTEO ascends (rewards.py)")
    p.add_argument("--select", help="the best-of-N selection score, same syntax (default: --reward)")
    p.add_argument("--lr", type=float, default=0.2, help="SGD learning rate on e_init (the paper's 0.2)")
    p.add_argument("--temperature", type=float, help="final sampling temperature (default: the run's tuned one)")
    p.add_argument("--soft-temperature", type=float, help="the soft path's softmax(z / T) (default: the run's, "
                   "else the preset's)")
    p.add_argument("--chunk", type=int, default=250, help="images per batch (memory: one backward pass each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def prepare(args):
    check_range("--lr", args.lr, low=0)
    check_range("--chunk", args.chunk, low=1)
    rt = runtime(args.device)
    gen, tokenizer, run, ckpt, temperature, preset = load_run(args.run, rt.device, args.temperature)
    gen.requires_grad_(False)                                          # TTEO never touches a weight
    tokenizer.requires_grad_(False)
    rewards = parse_rewards(args.reward)
    select = parse_rewards(args.select) if args.select else rewards
    return rt, gen, tokenizer, run, ckpt, preset, rewards, select, sampling_settings(run, temperature, preset, args)


# ----------------------------------------------------------------------------------------------------------------
# Commands.
# ----------------------------------------------------------------------------------------------------------------
def main_sample(argv=None):
    p = ArgumentParser(prog="tteo.py sample", description="best-of-N + TTEO samples of a one-step generator")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--labels", help="class ids, comma separated (default: 0, 1, 2, ... cycled)")
    p.add_argument("--best-of", type=int, default=4, help="N candidates per image")
    p.add_argument("--iters", type=int, default=4, help="TTEO iterations per candidate (0: best-of-N alone)")
    p.add_argument("--grid", default="after", choices=("after", "pairs"), help="pairs: rows of 8 before, 8 after")
    p.add_argument("--out", default="grid.png")
    common_args(p)
    args = p.parse_args(argv)
    check_range("--n", args.n, low=1)
    check_range("--best-of", args.best_of, low=1)
    check_range("--iters", args.iters, low=0)
    rt, gen, tokenizer, run, ckpt, preset, rewards, select, s = prepare(args)
    labels = parse_labels(args.labels, args.n, gen.nclass).to(rt.device)
    t0, counts, parts = time.time(), Counter(), []
    for k, lab in enumerate(labels.split(args.chunk)):
        out, c = search(gen, tokenizer, lab, rewards, select, s, args.best_of, args.iters, args.lr, args.seed, k)
        cell = out["cells"][(args.best_of, args.iters)]
        counts.update({key: v * len(lab) for key, v in c.items()})   # passes each image of the chunk went through
        parts.append(dict(images=cell["images"], before=out["before"]["images"], choice=cell["choice"],
                          reward_before=out["before"]["reward"], reward_after=score(rewards, cell["images"],
                                                                                    lab.cpu())[0]))
    seconds = time.time() - t0
    images, plain, choice, before, after = (torch.cat([q[key] for q in parts]) for key in
                                            ("images", "before", "choice", "reward_before", "reward_after"))
    if args.grid == "pairs":                                           # rows of 8: plain, then after the search
        save_image_grid(torch.cat([torch.cat([plain[i:i + 8], images[i:i + 8]]) for i in range(0, args.n, 8)]),
                        args.out, nrow=8)
    else:
        save_image_grid(images, args.out)
    per_image = {key: round(v / args.n, 3) for key, v in sorted(counts.items())}
    result = dict(run=args.run, step=ckpt["step"], teacher=preset, n=args.n, labels=labels.tolist(), seed=args.seed,
                  best_of=args.best_of, iters=args.iters, lr=args.lr, reward=args.reward,
                  select=args.select or args.reward, chunk=args.chunk, **s, passes_per_image=per_image,
                  passes_note="the search's own passes; before_* is the extra decode that measures the plain sample",
                  seconds=round(seconds, 2), reward_before_mean=round(before.mean().item(), 6),
                  reward_after_mean=round(after.mean().item(), 6), reward_before=[round(v, 6) for v in before.tolist()],
                  reward_after=[round(v, 6) for v in after.tolist()], chosen_candidate=choice.tolist())
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}: {args.n} images, best of {args.best_of}, {args.iters} TTEO iterations, reward "
          f"{result['reward_before_mean']} -> {result['reward_after_mean']}, {seconds:.1f} s; per image: "
          f"{per_image.get('generator_forward', 0)} generator forward, {per_image.get('generator_backward', 0)} "
          f"backward, {per_image.get('decoder_forward', 0)} decoder passes")


def main_table(argv=None):
    """The paper's TTS plot as a table: every (N, iterations) cell from one pass (candidates and iterations are
    prefixes of each other), each cell exactly what ``tteo.py sample --best-of N --iters k`` gives."""
    p = ArgumentParser(prog="tteo.py table", description="reward, class consistency and FID over N x iterations")
    p.add_argument("--n", type=int, default=2000, help="images per cell (FID compares equal counts only)")
    p.add_argument("--best-of", default="1,2,4,8")
    p.add_argument("--iters", default="0,2,4")
    p.add_argument("--out", default="runs/tteo_table.json")
    common_args(p)
    args = p.parse_args(argv)
    check_range("--n", args.n, low=2)
    try:
        ns, ks = ([int(v) for v in text.split(",")] for text in (args.best_of, args.iters))
    except ValueError:
        raise UserError("--best-of and --iters take integers like 1,2,4,8") from None
    for name, values, low in (("--best-of", ns, 1), ("--iters", ks, 0)):
        for v in values:
            check_range(name, v, low=low)
    rt, gen, tokenizer, run, ckpt, preset, rewards, select, s = prepare(args)
    if "bundled" not in PRESETS[preset]:
        raise UserError(f"tteo.py table scores with the toy evaluation network; preset '{preset}' has no toy data")
    labels = torch.arange(args.n, device=rt.device) % gen.nclass
    t0, cells = time.time(), {}
    for k, lab in enumerate(labels.split(args.chunk)):
        out, _ = search(gen, tokenizer, lab, rewards, select, s, max(ns), max(ks), args.lr, args.seed, k, ks, ns)
        for key, cell in out["cells"].items():
            cells.setdefault(key, []).append(cell["images"])
    seconds = time.time() - t0
    evaluator, rows = Evaluator("toy"), []
    for n in ns:
        for k in ks:
            images = torch.cat(cells[(n, k)])
            m = evaluator(images, labels.cpu())
            reward = score(rewards, images, labels.cpu())[0].mean().item()
            rows.append(dict(best_of=n, iters=k, reward=round(reward, 6), class_acc=m["class_acc"], fid=m["fid"],
                             recall=m["recall"], coverage=m["coverage"], generator_forward=n * (k + 1),
                             generator_backward=n * k, decoder_forward=n * (k + 1)))
            print(f"N={n} iters={k}: reward {reward:.4f} class acc {m['class_acc']:.4f} FID {m['fid']:.3f} "
                  f"recall {m['recall']:.3f} generator passes/image {n * (k + 1)} fwd + {n * k} bwd")
    result = dict(run=args.run, step=ckpt["step"], n=args.n, seed=args.seed, lr=args.lr, reward=args.reward,
                  select=args.select or args.reward, chunk=args.chunk, **s, cells=rows, seconds=round(seconds, 1))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out} ({seconds:.0f} s of search)")


def demo():
    """No arguments: best-of-2 with 2 TTEO iterations on the bundled teacher used as a (not distilled) one-step
    generator, 8 images, the toy reward; seconds on a CPU."""
    teacher, tokenizer, preset = load_pair("maskbit", verbose=False)
    gen = make_generator(teacher).eval().requires_grad_(False)
    rewards, labels = parse_rewards("classifier"), torch.arange(8)
    settings = dict(r_init=0.6, sigma_init=0.1, temperature=0.5, soft_temperature=0.5)
    out, counts = search(gen, tokenizer, labels, rewards, rewards, settings, 2, 2, 0.05, 0)
    print(f"{preset} teacher as a one-step generator, 8 images: reward {out['before']['reward'].mean():.3f} (plain) "
          f"-> {out['cells'][(2, 2)]['score'].mean():.3f} (best of 2, 2 TTEO iterations); passes: {dict(counts)}")


def main(argv):
    commands = dict(sample=main_sample, table=main_table, train_reward=main_train)
    if not argv:
        return demo()
    name = argv[0].replace("-", "_")
    if name not in commands:
        raise UserError(f"unknown command '{argv[0]}': python tteo.py sample|table|train-reward ... (see --help "
                        f"of each), or no arguments for a demo")
    return commands[name](argv[1:])


if __name__ == "__main__":
    import sys
    cli(lambda: main(sys.argv[1:]))
