"""Measurements that run the distillation itself: where a step's time goes (and the toy world's training steps'),
whether the toy proof holds beyond the joint it was tuned on, and what the released architectures cost at full size.
Each prints JSON lines that the README and docs/ quote; none is a test (they take minutes).

* ``python bench.py step --teacher maskbit [distill.py flags]``: one full Di[M]O step (generator update + auxiliary
  update) against the sum of the passes it needs, each timed alone on the same batch.  The ratio step / sum says how
  much the loop adds (goal: at most 1.15).  ``--versus=--compile`` (or ``--versus=--amp``): then full steps against a
  run with those flags added, alternated, with the speed-up and the steps after which a compilation has paid for
  itself, and how far those flags move one generator pass's logits and gradients (``precision_gap``).  ``--profile``:
  then the operators that take the most time over 5 full steps (torch.profiler).
* ``python bench.py toy-world [--profile]``: a step of each training loop of the bundled assets (train.py tokenizer,
  train.py teacher, eval.py train-features, at their default batches), natively and again in a child process with
  this CPU's kernels restricted to AVX2 (``AVX2_ENV``), side by side; ``--profile``: each stage's top operators.
* ``python bench.py sweep --n 12 [distill.py flags]``: distill.py's toy-vocab defaults on N joints of a broad family
  (``toy_vocab.family_joint``: V 3-6, L 3-5, mixtures of 4-10 unequal modes or Markov chains, optional uniform
  floor); per joint the generator's TV, the one-step teacher's TV and the exact sampler's floor.
* ``python bench.py draws --runs A,B,...``: finished image runs (distill.py or soft_refine.py), each EMA generator at
  the temperature and inference sigma its run tuned (or ``--sigma``), scored on the same fresh draws (seeds 10-17 by
  default, 2000 samples each): mean and spread of FID, class consistency and recall (FID and recall per draw), and
  each run's FID minus the first run's, paired draw by draw, with its standard error.  One draw's FID moves by about
  0.1 from draw to draw, its recall by 0.02-0.05; a run's own metrics.json reports one.
  ``--teacher``: the teacher too (its preset's sampler, samples from the exact cache) and each run's ratio to it.
  ``--like-first``: every run at the first run's temperature and sigma (a GAN stage against its Di[M]O start at the
  start's settings, so that the difference read is the stage's, not its tuning's).
* ``python bench.py full-size --presets maskbit-12bit,maskgit,meissonic``: the full-size architectures on random
  weights (full_size.py says what each measures).

Wall-clock figures depend on the machine: print ``python eval.py speed --teacher maskbit`` beside them.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import distill
import full_size
from config import PRESETS, ArgumentParser, UserError, check_range, cli, get_preset
from data import load_images
from eval import (EVAL_BATCH, FEATURES_LR, FeatureNet, augment, decode, fit_classifier, reference_tokens,
                  train_features_parser)
from generator import draw_r_init, generate, load_run, one_step_images, token_init
from masking import guided_logits, random_mask
from optim import ema_update
from tasks import held_out_evaluator
from teacher import build_teacher, load_pair
from tokenizer import build_tokenizer
from toy_vocab import family_joint
from train import teacher_parser, tokenize, tokenizer_parser, train_teacher, train_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------------------------------------------
# step: the loop's overhead over its passes.
# ----------------------------------------------------------------------------------------------------------------
def seconds(fn, *args):
    """Wall seconds of one call fn(*args)."""
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def full_step(run):
    """One Di[M]O iteration as distill.py makes it (at step 0): the generator update, then the auxiliary update."""
    distill.generator_update(run, 0, draw_r_init(run.args.r_init, run.rng), run.args.sigma_init)
    distill.aux_update(run, 0, run.args.sigma_init)


def bench_step(run, repeats):
    """Median seconds of a full step and of each pass alone (alternated, K repeats after one warm-up round)."""
    a, rng, dev = run.args, run.rng, run.rt.device
    labels = torch.randint(0, run.teacher.nclass, (a.batch_size,), generator=rng).to(dev)
    x_init = token_init(run.gen, a.batch_size, draw_r_init(a.r_init, rng), rng).to(dev)
    x_t, _ = random_mask(generate(run.gen, labels, a.r_init, a.sigma_init, 1.0, rng), run.teacher.mask_id,
                         a.schedule, rng)
    trainable = [p for m in (run.gen, run.aux) for p in m.parameters() if p.requires_grad]

    def backward(out):
        out.float().backward(torch.ones_like(out, dtype=torch.float32))

    def optimisers():
        for p in trainable:
            p.grad = torch.zeros_like(p)                                 # Adam skips parameters without gradients
        return seconds(lambda: (run.opt_g.step(), run.opt_aux.step(), ema_update(run.ema, run.gen, a.ema, 0)))

    def timed(fn):
        t0 = time.perf_counter()
        with run.rt.autocast():
            out = fn()
        return out if isinstance(out, float) else time.perf_counter() - t0

    no_grad = torch.no_grad()
    parts = {"generator forward + backward": lambda: backward(run.gen_call(labels, x_init, a.sigma_init, rng)),
             "teacher CFG pass": lambda: no_grad(guided_logits)(run.teacher, x_t, labels, a.teacher_cfg),
             "auxiliary forward": lambda: no_grad(run.aux.logits)(x_t, labels),
             "fresh generator sample": lambda: no_grad(generate)(run.gen, labels, a.r_init, a.sigma_init, 1.0, rng),
             "auxiliary forward + backward": lambda: backward(run.aux_call(x_t, labels)),
             "Adam steps + EMA": optimisers}
    per_step = {name: a.grad_accum * (a.aux_updates if name in ("fresh generator sample",
                                                                "auxiliary forward + backward") else 1)
                for name in parts}                                       # how often a step runs each pass
    per_step["Adam steps + EMA"] = 1
    times = {name: [] for name in [*parts, "full step"]}
    for _ in range(repeats + 1):
        for name, fn in [*parts.items(), ("full step", lambda: full_step(run))]:
            times[name].append(timed(fn))
            for m in (run.gen, run.aux):
                m.zero_grad(set_to_none=True)
    med = {name: float(np.median(t[1:])) for name, t in times.items()}
    alone = sum(med[name] * per_step[name] for name in parts)
    return dict(teacher=a.teacher, batch_size=a.batch_size, aux_updates=a.aux_updates, grad_accum=a.grad_accum,
                repeats=repeats, seconds={k: round(v, 4) for k, v in med.items()}, passes_per_step=per_step,
                sum_of_passes=round(alone, 4), ratio=round(med["full step"] / alone, 3))


def top_operators(run_steps, steps=5, top=12):
    """torch.profiler over run_steps(steps), already warm (both callers time steps first): the operators with the
    most self time, each with its seconds per step and share of the total."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_steps(steps)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    return [dict(op=e.key, self_s_per_step=round(e.self_cpu_time_total / 1e6 / steps, 4),
                 share=round(e.self_cpu_time_total / total, 3)) for e in ops[:top]]


def precision_gap(base, other, seed=0):
    """How far the other run's arithmetic (e.g. --amp, --compile) moves one generator pass from the base run's: the
    relative difference of the logits and of the parameter gradients of a cross-entropy, same weights, same masked
    tokens, dropout off (the base generator's weights are first copied into the other's)."""
    other.gen.load_state_dict(base.gen.state_dict())
    g = torch.Generator().manual_seed(seed)
    t = base.teacher
    x0 = torch.randint(0, t.vocab, (base.args.batch_size, t.seq_len, t.splits), generator=g)   # [B, N, S]
    x_t, _ = random_mask(x0, t.mask_id, base.args.schedule, generator=g)
    labels = torch.randint(0, t.nclass, (base.args.batch_size,), generator=g)

    def one_pass(run):
        gen, training = run.gen, run.gen.training
        gen.eval().zero_grad(set_to_none=True)
        with run.rt.autocast():
            logits = gen.logits(x_t.to(run.rt.device), labels.to(run.rt.device)).float()   # [B, N, S, V]
        F.cross_entropy(logits.flatten(0, 2), x0.to(run.rt.device).flatten()).backward()
        grads = torch.cat([p.grad.flatten() for p in gen.parameters() if p.grad is not None])
        gen.train(training).zero_grad(set_to_none=True)
        return logits.detach(), grads

    def rel(b, a):
        return float(f"{((b - a).norm() / a.norm()).item():.3g}")
    (logits_a, grads_a), (logits_b, grads_b) = one_pass(base), one_pass(other)
    return dict(logits_rel_diff=rel(logits_b, logits_a), grad_rel_diff=rel(grads_b, grads_a))


def bench_versus(base, other, flags, repeats):
    """Full steps of two runs that differ by flags (e.g. --compile, --amp), alternated, so that both see the same
    machine.  The other run's first step carries any one-off cost (compilation): with the median steps it says after
    how many steps the switch has paid for itself."""
    times = {"base": [], "other": []}
    for _ in range(repeats + 1):
        for name, run in (("base", base), ("other", other)):
            times[name].append(seconds(full_step, run))
    med = {name: float(np.median(t[1:])) for name, t in times.items()}
    saved = med["base"] - med["other"]
    return dict(teacher=base.args.teacher, batch_size=base.args.batch_size, repeats=repeats, versus=flags,
                step_s=round(med["base"], 4), step_s_versus=round(med["other"], 4),
                speedup=round(med["base"] / med["other"], 3), first_step_s_versus=round(times["other"][0], 1),
                break_even_steps=round((times["other"][0] - med["other"]) / saved) if saved > 0 else None)


def main_step(argv):
    parser = ArgumentParser(prog="bench.py step", description="a distillation step vs the sum of its passes")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round")
    parser.add_argument("--versus", metavar="FLAGS", help="then full steps against a run with these distill.py flags "
                        "added, alternated, e.g. --versus=--compile or --versus=--amp (training steps only; evaluation "
                        "would compile again for its own batch sizes)")
    parser.add_argument("--profile", action="store_true", help="then the operators with the most time over 5 full "
                        "steps (torch.profiler), a line each")
    args, rest = parser.parse_known_args(argv)
    check_range("--repeats", args.repeats, low=1)
    a = distill.build_parser().parse_args(rest)
    run, _ = distill.setup_run(a)
    print(json.dumps(bench_step(run, args.repeats)))
    if args.profile:
        for row in top_operators(lambda k: [full_step(run) for _ in range(k)]):
            print(json.dumps(row))
    if args.versus:
        other, _ = distill.setup_run(distill.build_parser().parse_args(rest + args.versus.split()))
        timing = bench_versus(run, other, args.versus, args.repeats)     # first: its first step carries a compile
        print(json.dumps(dict(timing, **precision_gap(run, other))))


# ----------------------------------------------------------------------------------------------------------------
# toy-world: the training steps of the bundled assets, natively and with AVX2 kernels.
# ----------------------------------------------------------------------------------------------------------------
# How this CPU is made to run the kernels of an AVX2-only one (oneDNN, ATen and MKL each read their own variable).
AVX2_ENV = dict(ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2")


def toy_world_stages(n_images=1024, seed=0):
    """-> {stage: (batch, fn(k))}: fn runs k steps of that stage's own training loop (train.py tokenizer, train.py
    teacher, eval.py train-features) with its command's defaults, on fresh weights and toy images."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    preset = get_preset("maskbit-toy")
    images, labels, nclass = load_images("toy", "train", n_images)
    shipped_teacher, shipped_tokenizer, _ = load_pair("maskbit-toy", verbose=False)
    tokens = tokenize(shipped_tokenizer, shipped_teacher, images, "cpu")  # [n, N, S]
    tokenizer, teacher = build_tokenizer("maskbit", preset["tokenizer"]), build_teacher("maskbit", preset["generator"])
    features = FeatureNet(nclass)
    opt = torch.optim.Adam(features.parameters(), lr=FEATURES_LR)
    t = tokenizer_parser().parse_args(["--out", ""])
    g = teacher_parser().parse_args(["--out", "", "--tokenizer", ""])
    f = train_features_parser().parse_args([])
    return dict(tokenizer=(t.batch_size, lambda k: train_tokenizer(tokenizer, images, k, t.batch_size, t.lr, t.warmup,
                                                                    t.entropy_positions, gen, progress=False)),
                teacher=(g.batch_size, lambda k: train_teacher(teacher, tokens, labels, k, g.batch_size, g.lr, g.warmup,
                                                                g.label_dropout, g.label_smoothing, g.ema, gen,
                                                                progress=False)),
                features=(f.batch_size, lambda k: fit_classifier(features, opt, lambda step: FEATURES_LR, augment,
                                                                  images, labels, k, f.batch_size, gen)))


def toy_world_rows(steps, profile):
    """One row per stage (seconds per step, median of `steps` single steps after a warm-up), then its operators."""
    rows = []
    for stage, (batch, run_steps) in toy_world_stages().items():
        run_steps(1)
        times = [seconds(run_steps, 1) for _ in range(steps)]
        rows.append(dict(stage=stage, batch_size=batch, step_s=round(float(np.median(times)), 4)))
        if profile:                                                      # over as many steps, at most 5
            rows += [dict(stage=stage, **op) for op in top_operators(run_steps, min(steps, 5), top=8)]
    return rows


def main_toy_world(argv):
    parser = ArgumentParser(prog="bench.py toy-world", description="the toy world's training steps, native and AVX2")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per stage (the median is reported)")
    parser.add_argument("--profile", action="store_true", help="also each stage's top operators (torch.profiler, "
                        "over min(--steps, 5) steps)")
    parser.add_argument("--native-only", action="store_true", help="skip the second run with AVX2 kernels")
    args = parser.parse_args(argv)
    check_range("--steps", args.steps, low=1)
    rows = toy_world_rows(args.steps, args.profile)
    if not args.native_only:                                             # a child: the kernels are chosen at start-up
        cmd = [sys.executable, os.path.join(HERE, "bench.py"), "toy-world", "--native-only"] + argv
        proc = subprocess.run(cmd, env=dict(os.environ, **AVX2_ENV), capture_output=True, text=True, cwd=HERE)
        if proc.returncode != 0:
            raise UserError(f"bench.py toy-world with AVX2 kernels failed: {proc.stderr.strip().splitlines()[-1:]}")
        avx2 = {(r["stage"], r.get("op")): r for r in map(json.loads, proc.stdout.splitlines())}
        for row in rows:
            other = avx2.get((row["stage"], row.get("op")), {})
            row.update({f"{key}_avx2": other[key] for key in ("step_s", "share") if key in row and key in other})
            if "step_s_avx2" in row:
                row["avx2_slowdown"] = round(row["step_s_avx2"] / row["step_s"], 3)
    for row in rows:
        print(json.dumps(row))


# ----------------------------------------------------------------------------------------------------------------
# sweep: the toy-vocab proof on joints nobody tuned for.
# ----------------------------------------------------------------------------------------------------------------
def main_sweep(argv):
    parser = ArgumentParser(prog="bench.py sweep", description="toy-vocab distillation over a family of joints")
    parser.add_argument("--n", type=int, default=12, help="number of joints (family seeds first ... first+n-1)")
    parser.add_argument("--first", type=int, default=0, help="first family seed")
    parser.add_argument("--out", default="runs/sweep", help="one run per joint in OUT/joint_<i>, then sweep.json")
    args, rest = parser.parse_known_args(argv)
    check_range("--n", args.n, low=1)
    if any(flag in rest for flag in ("--teacher", "--joint", "--resume", "--out")):
        raise UserError("bench.py sweep sets --teacher, --joint and --out itself; pass only distill.py's settings")
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for i in range(args.first, args.first + args.n):
        joint, info = family_joint(i)
        path, out = os.path.join(args.out, f"joint_{i}.npy"), os.path.join(args.out, f"joint_{i}")
        np.save(path, joint)
        t0 = time.time()
        distill.main(["--teacher", "toy-vocab", "--joint", path, "--out", out, *rest])
        with open(os.path.join(out, "metrics.json")) as f:
            m = json.load(f)
        rows.append(dict(joint=i, **info, tv_generator=m["tv_generator"], tv_teacher_1step=m["tv_teacher_1step"],
                         tv_floor=m["tv_teacher_multistep"], seconds=round(time.time() - t0)))
        print(json.dumps(rows[-1]), flush=True)
    tvs = [r["tv_generator"] for r in rows]
    summary = dict(joints=len(rows), median_tv=round(float(np.median(tvs)), 4), worst=max(rows, key=lambda r:
                   r["tv_generator"]), above_0_10=sum(t > 0.10 for t in tvs), flags=" ".join(rest))
    with open(os.path.join(args.out, "sweep.json"), "w") as f:
        json.dump(dict(rows=rows, summary=summary), f, indent=1)
    print(json.dumps(summary))


# ----------------------------------------------------------------------------------------------------------------
# draws: finished image runs compared on the same fresh draws.
# ----------------------------------------------------------------------------------------------------------------
def main_draws(argv):
    parser = ArgumentParser(prog="bench.py draws", description="finished image runs scored on the same fresh draws")
    parser.add_argument("--runs", required=True, help="comma-separated run folders; the first is the baseline")
    parser.add_argument("--draws", type=int, default=8, help="sampling seeds first ... first+draws-1")
    parser.add_argument("--first", type=int, default=10, help="first sampling seed (a run of seed S reports draw S "
                        "and tunes on S+1)")
    parser.add_argument("--n", type=int, default=2000, help="samples per draw (FID depends on it)")
    parser.add_argument("--teacher", action="store_true", help="also the runs' teacher (its preset's multi-step "
                        "sampler) on the same draws, first, and each run's FID ratio to it")
    parser.add_argument("--cache", default="runs/cache", help="exact cache of the teacher's samples "
                        "(eval.reference_tokens, shared with eval.py teacher; '': none)")
    parser.add_argument("--sigma", type=float, help="every run's inference sigma (default: the one each run tuned)")
    parser.add_argument("--like-first", action="store_true", help="every run at the first run's inference "
                        "temperature and sigma (a stage against its start at the start's settings)")
    args = parser.parse_args(argv)
    check_range("--draws", args.draws, low=2)
    check_range("--n", args.n, low=10)
    folders = args.runs.split(",")
    for folder in folders:
        if not all(os.path.isfile(os.path.join(folder, f)) for f in ("checkpoint.pt", "metrics.json")):
            raise UserError(f"--runs {folder}: not a finished run (needs checkpoint.pt and metrics.json)")
    loaded = [load_run(folder, sigma=args.sigma) for folder in folders]  # (gen, tokenizer, settings, ckpt, T, preset)
    if args.like_first:
        first_run = loaded[0]
        loaded = [first_run] + [load_run(f, temperature=first_run[4], sigma=first_run[2]["gen_sigma"])
                                for f in folders[1:]]
    scorers = {(preset, run.get("eval_data"), run.get("features")) for _, _, run, _, _, preset in loaded}
    if len(scorers) > 1:
        differ = "; ".join(sorted(map(str, scorers)))
        raise UserError(f"--runs: the runs differ in teacher preset, --eval-data or --features ({differ}); compare "
                        f"runs of one teacher scored on the same data")
    preset, eval_data, features = scorers.pop()
    evaluator = held_out_evaluator(preset, eval_data, features)         # the runs' own held-out scorer
    if evaluator is None:
        raise UserError("--runs: a released preset without --eval-data has no held-out images to score against")
    labels = torch.arange(args.n) % loaded[0][0].nclass
    seeds, first, teacher_fid = list(range(args.first, args.first + args.draws)), None, None

    def summary(rows):
        scores = {k: np.array([r[k] for r in rows]) for k in ("fid", "class_acc", "recall")}
        per_draw = {k: [round(float(v), 4) for v in scores[k]] for k in ("fid", "recall")}
        means = {f"{k}_mean": round(float(v.mean()), 4) for k, v in scores.items()}
        spreads = {f"{k}_sd": round(float(scores[k].std(ddof=1)), 4) for k in ("fid", "recall")}
        return scores["fid"], dict(n=args.n, draws=seeds, **per_draw, **means, **spreads)
    if args.teacher:                                                     # the same labels and seeds, multi-step
        run = loaded[0][2]
        teacher, tokenizer, _ = load_pair(run["teacher"], run["teacher_ckpt"], run["tokenizer_ckpt"], verbose=False)
        settings = PRESETS[preset]["sampler"]
        fid, row = summary([evaluator(decode(teacher, tokenizer, reference_tokens(teacher, labels, settings, s,
                                                                                  args.cache)[0]), labels)
                            for s in seeds])
        teacher_fid = fid.mean()
        print(json.dumps(dict(run="teacher", steps=settings["steps"], **row)), flush=True)
    for folder, (gen, tokenizer, run, ckpt, temperature, _) in zip(folders, loaded):
        fid, row = summary([evaluator(one_step_images(gen, tokenizer, labels, run["r_init"], run["gen_sigma"],
                                                      temperature, s, EVAL_BATCH), labels) for s in seeds])
        first = fid if first is None else first
        diff = fid - first                                               # per draw, against the first run: paired
        row.update(fid_minus_first=round(float(diff.mean()), 4),
                   fid_minus_first_se=round(float(diff.std(ddof=1) / np.sqrt(len(seeds))), 4))
        if teacher_fid is not None:
            row["ratio_to_teacher"] = round(float(fid.mean() / teacher_fid), 4)
        print(json.dumps(dict(run=folder, step=ckpt["step"], temperature=temperature, sigma=run["gen_sigma"], **row)),
              flush=True)


def main(argv):
    """python bench.py {step,toy-world,sweep,draws,full-size} ..."""
    commands = {"step": main_step, "toy-world": main_toy_world, "sweep": main_sweep, "draws": main_draws,
                "full-size": full_size.main}
    if not argv or argv[0] not in commands:
        raise UserError(f"usage: python bench.py {{{','.join(commands)}}} [--help]")
    commands[argv[0]](argv[1:])


if __name__ == "__main__":
    cli(lambda: main(sys.argv[1:]))
