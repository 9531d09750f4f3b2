"""What distill.py needs to know about a teacher: defaults, models, monitoring, grids and final evaluation.

Two kinds of teacher:

* image teachers (the MaskBit and MaskGIT presets; ``--teacher maskbit`` = the bundled toy MaskBit pair unless
  checkpoints are given): generator and auxiliary model are copies of the teacher with frozen embedding and output
  layers; the final evaluation compares one-step generator samples with the multi-step teacher and the teacher at
  one step, by ``eval.py``'s metrics on the same number of samples, after tuning the generator's inference
  temperature on a separate seed (as the paper tunes it) and then its inference sigma under a recall floor (ours).
* ``toy-vocab``: the exact oracle of ``toy_vocab.py``; generator and auxiliary model are copies of a small
  transformer first trained as a masked model of the oracle; the evaluation is total variation to the target.

Defaults below are for this CPU; on a GPU with a released teacher use the paper's values (docs/released.md): lr 1e-5,
batch 64 per GPU, about 30k steps.
"""
import contextlib
import copy
import os
import time
from types import SimpleNamespace

import numpy as np
import torch

import ddp
from config import PRESETS, UserError, get_preset
from data import save_image_grid, to_uint8
from eval import EVAL_BATCH, Evaluator, decode, reference_tokens, teacher_images, teacher_images_per_s, \
    write_result
from generator import draw_r_init, generate, generator_logits, make_generator, one_step_images
from masking import random_mask
from teacher import load_pair
from toy_vocab import OracleTeacher, ToyTransformer, check_joint, empirical, pretrain_mdm, random_joint, \
    reference_tvs, total_variation

# the paper's: training draws at temperature 1, inference at the training sigma (no sigma tuning)
IMAGE_DEFAULTS = dict(schedule="arccos", eval_n=2000, ema=0.9999, train_temperature=1.0, tune_sigma="",
                      recall_margin=0.02)
# measured here (docs/toy_vocab.md): 2 auxiliary updates at 3x the lr of one and the generator's lr decayed
# over the second half keep the auxiliary model up with the generator (a lagging one over-sharpens it); r_init 0.3
# (not 0.5) gives short sequences enough distinct initial inputs (L=3 at 0.5 leaves about a dozen) and 3000 steps
# let the longest joints converge; 100k samples bring the sampling floor of TV down to about 0.02 for 1000 outcomes;
# an EMA of about 100 steps (0.99), since the decaying lr already settles the weights and a longer one lags them
TOY_VOCAB_DEFAULTS = dict(schedule="arccos", steps=3000, batch_size=256, lr=3e-4, lr_aux=3e-3, normalisation="mean",
                          label_smoothing=0.0, eval_n=100000, r_init="0.3", sigma_init=0.1, teacher_cfg=1.0, gen_temperature=1.0,
                          aux_updates=2, lr_decay=0.5, ema=0.99, train_temperature=1.0, tune_sigma="",
                          recall_margin=0.02)


# the draws the inference settings are tuned on, as offsets to the report's seed: the temperature on the first,
# the sigma on all four: at the small sigmas tuned, one draw of 2000 moves the generator's recall by 0.02-0.05 (SD
# over draws 10-17, docs/soft_dimo.md), and two draws misjudged it by up to 0.05.  The teacher's recall floor reads
# the report draw and the first two (its recall moves less, SD 0.016; their samples ship for seed 0)
TUNING_DRAWS = (1, 2, 3, 4)
FLOOR_DRAWS = TUNING_DRAWS[:2]


def tunes_sigma(a):
    """Whether the evaluation tunes the inference sigma: a --tune-sigma grid and no --gen-sigma."""
    return bool(a.sigmas) and a.gen_sigma is None


def given_sigma(a):
    """The inference sigma when it is not tuned: --gen-sigma, else the training sigma_init."""
    return a.sigma_init if a.gen_sigma is None else a.gen_sigma


def sigma_for_recall(sigmas, recalls, floor):
    """The inference sigma where recall meets floor: on the least-squares line recall = intercept + slope sigma
    through the measured (sigma, recall), the smallest sigma of the grid's range [min, max] where the line is at or
    above floor (the smallest sigma is the lowest FID: FID rises with sigma over the grid in every run measured);
    the grid's largest sigma when there is none.  A line through all the points, not the points one by one: one
    draw of 2000 samples moves recall by a few hundredths (docs/soft_dimo.md), so the first point above the floor
    is often above it by luck, and is then below it on fresh draws.
    -> (sigma rounded to 4 decimals, dict(slope, intercept)); (the largest sigma, {}) with fewer than two."""
    low, top = min(sigmas), max(sigmas)
    if len(set(sigmas)) < 2:
        return top, {}
    slope, intercept = (float(v) for v in np.polyfit(np.asarray(sigmas, float), np.asarray(recalls, float), 1))
    fit = dict(slope=round(slope, 4), intercept=round(intercept, 4))
    if intercept + slope * low >= floor:                                 # already at the grid's smallest sigma
        return low, fit
    if slope <= 0 or intercept + slope * top < floor:
        return top, fit
    return round((floor - intercept) / slope, 4), fit


def fill(a, defaults, source):
    """Unset settings take the defaults; ``a.defaults_used`` records which, and from where (config.json shows it:
    a setting not listed there was given, by a flag or by the run it continues)."""
    used = dict(getattr(a, "defaults_used", None) or {})
    for key, value in defaults.items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
            used[key] = source
    a.defaults_used = used


def distill_defaults(a, preset):
    """An image teacher's distillation defaults: the preset's (config.PRESETS[preset]['distill']), then the rest."""
    fill(a, {k: (str(v) if k == "r_init" else v) for k, v in PRESETS[preset]["distill"].items()},
         f"preset {preset}")
    fill(a, IMAGE_DEFAULTS, "image default")


def common_setup(a, rt, teacher, student):
    """Teacher frozen; generator, EMA and auxiliary model copied from the student; optimisers; compile."""
    teacher = teacher.to(rt.device).eval().requires_grad_(False)
    gen = make_generator(student).to(rt.device)
    aux = make_generator(student).to(rt.device)
    ema = copy.deepcopy(gen).eval().requires_grad_(False).to("cpu" if a.ema_cpu else rt.device)
    eps = 1e-6 if rt.amp else 1e-8                                       # Di[M]O: eps 1e-6 under bf16
    opt_g = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad], lr=a.lr, betas=(0.9, 0.999), eps=eps)
    opt_aux = torch.optim.Adam([p for p in aux.parameters() if p.requires_grad], lr=a.lr_aux, betas=(0.9, 0.999),
                               eps=eps)
    for model in (teacher, gen, aux):                                   # --compile: the transformer passes
        if a.compile and hasattr(model, "forward_embeddings"):
            model.forward_embeddings = rt.compile(model.forward_embeddings)

    def draw_labels(batch, rng):                                         # a training batch's conditions: class ids
        return torch.randint(0, teacher.nclass, (batch,), generator=rng).to(rt.device)
    # draw_labels (text_task.py: prompts), w_dimo, extra_terms, after_step, extra_state: the seams through which a
    # text teacher's conditions, and soft_refine.py's losses, discriminator update and their checkpointed state,
    # enter distill.py's loop (plain class-to-image Di[M]O uses none of them).
    return SimpleNamespace(args=a, rt=rt, teacher=teacher, gen=gen, aux=aux, ema=ema, opt_g=opt_g, opt_aux=opt_aux,
                           draw_labels=draw_labels, gen_call=ddp.wrap(gen, generator_logits),
                           aux_call=ddp.wrap(aux, lambda m, tokens, labels: m.logits(tokens, labels)),
                           w_dimo=1.0, extra_terms=[], after_step=[], extra_state={})


class Stopwatch:
    """Seconds per named phase, summed over repeats: the evaluation's time breakdown in metrics.json."""

    def __init__(self):
        self.seconds = {}

    @contextlib.contextmanager
    def __call__(self, name):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 2)


# ----------------------------------------------------------------------------------------------------------------
# Image teachers.
# ----------------------------------------------------------------------------------------------------------------
def held_out_evaluator(preset, eval_data=None, features=None):
    """The scorer of an image run: --eval-data (the bundled presets: the toy data), the feature network
    (--features, else the shipped one), 5000 held-out images.  None for a released preset without --eval-data."""
    data = eval_data or ("toy" if "bundled" in PRESETS[preset] else None)
    return Evaluator(data, n_ref=5000, **({"features": features} if features else {})) if data is not None else None


class ImageTask:
    monitor = None

    def __init__(self, a, rt):
        self.teacher, self.tokenizer, self.preset = load_pair(a.teacher, a.teacher_ckpt, a.tokenizer_ckpt,
                                                              verbose=ddp.is_main())
        distill_defaults(a, self.preset)
        self.sampler = dict(PRESETS[self.preset]["sampler"])
        self.tokenizer = self.tokenizer.to(rt.device)

    def setup(self, a, rt):
        run = common_setup(a, rt, self.teacher, self.teacher)
        if rt.amp:                                                       # the frozen teacher in bf16 saves memory;
            run.teacher = run.teacher.to(torch.bfloat16)                 # it then always runs under autocast
        run.task = self
        return run

    def fid_monitor(self, a, temperature, n, score=None):
        """In-training FID, class consistency and recall (plus score(images, labels)'s metrics, e.g. a reward)
        of the EMA generator on n samples of seed 1 at a fixed temperature, logged every --eval-every steps: the
        'along training' curves.  None without held-out data."""
        evaluator = self.evaluator(a)                                    # the final evaluation's, built once
        if evaluator is None:
            return None
        labels = torch.arange(n) % self.teacher.nclass

        def monitor(run):
            images = self.one_step_images(run, labels, temperature, 1)
            m = evaluator(images, labels)
            out = {f"fid_{n}": m["fid"], f"class_acc_{n}": m["class_acc"], f"recall_{n}": m["recall"]}
            out.update({f"{k}_{n}": v for k, v in (score(images, labels) if score else {}).items()})
            return out
        return monitor

    def one_step_images(self, run, labels, temperature, seed, model=None, sigma=None):
        """The EMA generator's (or model's) images at a temperature and an inference sigma (default sigma_init)."""
        sigma = run.args.sigma_init if sigma is None else sigma
        return one_step_images(model or run.ema, self.tokenizer, labels, run.args.r_init, sigma, temperature, seed,
                               EVAL_BATCH, run.rt.device)

    def tune_sampling(self, run, evaluator, labels, teacher_recall):
        """The inference settings, tuned on draws seed + 1 ... seed + 4 (the report is on seed).  First the
        temperature, by FID at the training sigma on seed + 1 (as the paper tunes it).  Then the inference sigma
        (ours, --tune-sigma, a grid that may lie on both sides of the training sigma): a smaller input perturbation,
        like a GAN's truncation trick, buys precision and FID with recall, and FID alone would take it to recall far
        below the teacher's; so the sigma where recall, averaged over the four draws, meets the teacher's
        (teacher_recall: its mean over the report draw and FLOOR_DRAWS) minus --recall-margin (``sigma_for_recall``).
        -> (temperature, sigma, record for metrics.json)."""
        a = run.args

        def score(t, sigma, draw=TUNING_DRAWS[0]):
            return evaluator(self.one_step_images(run, labels, t, a.seed + draw, sigma=sigma), labels)
        by_t = {t: score(t, a.sigma_init) for t in a.temperatures}
        temperature = min(by_t, key=lambda t: by_t[t]["fid"]) if by_t else a.gen_temperature
        record = dict(temperature_tuning_fid={t: m["fid"] for t, m in by_t.items()})
        if not tunes_sigma(a):
            return temperature, given_sigma(a), record
        grid = sorted({*a.sigmas, a.sigma_init})
        by_sigma = {s: [by_t[temperature] if s == a.sigma_init and temperature in by_t else score(temperature, s)]
                    + [score(temperature, s, d) for d in TUNING_DRAWS[1:]] for s in grid}
        table = {s: {k: float(np.mean([m[k] for m in ms])) for k in ("fid", "recall")} for s, ms in by_sigma.items()}
        floor = teacher_recall - a.recall_margin
        sigma, fit = sigma_for_recall(grid, [table[s]["recall"] for s in grid], floor)
        record.update(sigma_tuning=table, recall_fit=fit, recall_floor=round(floor, 4))
        return temperature, sigma, record

    def grid(self, run, path):
        """Rows of 8: generator (EMA, one step), teacher (multi-step), auxiliary model (multi-step, no CFG)."""
        labels = torch.arange(8, device=run.rt.device) % run.teacher.nclass
        aux_sampler = dict(self.sampler, guidance=1.0)
        with run.rt.autocast():
            rows = [self.one_step_images(run, labels, run.args.gen_temperature, 0),
                    teacher_images(run.teacher, self.tokenizer, labels, self.sampler, 0),
                    teacher_images(run.aux, self.tokenizer, labels, aux_sampler, 0)]
        save_image_grid(torch.cat(rows), path, nrow=8)

    def evaluator(self, a):
        """The held-out data's scorer, built once per run (held-out images, feature network, reference features);
        None for released presets without --eval-data."""
        if not hasattr(self, "_evaluator"):
            self._evaluator = held_out_evaluator(self.preset, a.eval_data, a.features)
        return self._evaluator

    def evaluate(self, run, extra=None, score=None):
        """FID / class consistency against held-out images (toy data for the bundled teacher, --eval-data
        otherwise).  Released presets without --eval-data: samples as .npz for the ADM evaluator.
        extra: {name: (model, temperature, sigma)}, more one-step generators scored beside run.ema at fixed settings
        (soft_refine.py: the Di[M]O generator it started from).  The teacher's samples come from the exact cache
        of eval.reference_tokens (--cache, then the shipped reference) when they were made before.
        score: fn(images, labels) -> {metric: value}, more metrics of each one-step generator's evaluated images
        (soft_refine.py: the reward), stored as '<metric>_generator' and '<metric>_<extra name>'."""
        a, extra, clock = run.args, extra or {}, Stopwatch()
        labels = torch.arange(a.eval_n) % run.teacher.nclass
        common = dict(teacher_preset=self.preset, teacher_sampler=self.sampler, eval_n=a.eval_n, seed=a.seed,
                      steps=a.steps, r_init=a.r_init, sigma_init=a.sigma_init)
        with clock("held-out reference features"):
            evaluator = self.evaluator(a)
        if evaluator is None:
            sampling = dict(gen_temperature=a.gen_temperature, gen_sigma=given_sigma(a))   # what load_run reads back
            images = self.one_step_images(run, labels, a.gen_temperature, a.seed, sigma=sampling["gen_sigma"])
            write_result(a.out, "generator_samples", dict(common, **sampling), images, npz=True)
            for name, (model, temperature, sigma) in extra.items():
                write_result(a.out, f"{name}_samples", dict(common, gen_temperature=temperature, gen_sigma=sigma),
                             self.one_step_images(run, labels, temperature, a.seed, model, sigma), npz=True)
            return dict(common, **sampling, npz=os.path.join(a.out, "generator_samples.npz"))
        first = [int(torch.nonzero(labels == c)[0]) for c in range(min(8, run.teacher.nclass))]
        on_device = labels.to(run.rt.device)
        key = dict(common, **evaluator.info)
        # the sigma tuning's recall floor reads the teacher on the report draw and on FLOOR_DRAWS: one draw of 2000
        # moves its recall by up to 0.025 (0.8915 / 0.877 / 0.9025 on draws 0 / 1 / 2 of the toy teacher)
        floor_draws = {f"teacher_seed+{d}": (self.sampler, a.seed + d) for d in FLOOR_DRAWS} if tunes_sigma(a) else {}
        draws = {"teacher": (self.sampler, a.seed), "teacher_1step": (dict(self.sampler, steps=1), a.seed),
                 **floor_draws}
        with run.rt.autocast(), clock("teacher samples"):               # exact cache: eval.reference_tokens
            refs = {name: reference_tokens(run.teacher, on_device, settings, seed, a.cache, run.rt.amp)
                    for name, (settings, seed) in draws.items()}
        with clock("teacher metrics"):
            teacher_multi, teacher_one = (decode(run.teacher, self.tokenizer, refs[name][0])
                                          for name in ("teacher", "teacher_1step"))
            t_m, t1_m = evaluator(teacher_multi, labels), evaluator(teacher_one, labels)
            teacher_multi, teacher_one = teacher_multi[first], teacher_one[first]
            teacher_recall = [t_m["recall"]] + [evaluator(decode(run.teacher, self.tokenizer, refs[name][0]),
                                                          labels)["recall"] for name in floor_draws]
        with clock("temperature and sigma tuning"):
            temperature, sigma, tuning = self.tune_sampling(run, evaluator, labels, float(np.mean(teacher_recall)))
        if floor_draws:
            tuning["teacher_recall_draws"] = teacher_recall
        with clock("generator samples"):
            images = self.one_step_images(run, labels, temperature, a.seed, sigma=sigma)
        with clock("generator metrics"):
            gen_m = evaluator(images, labels)
        metrics = dict(fid_generator=gen_m["fid"], fid_teacher=t_m["fid"], fid_teacher_1step=t1_m["fid"],
                       class_acc_generator=gen_m["class_acc"], class_acc_teacher=t_m["class_acc"],
                       class_acc_teacher_1step=t1_m["class_acc"], generator=gen_m, teacher=t_m, teacher_1step=t1_m,
                       gen_temperature=temperature, gen_sigma=sigma, **tuning,
                       teacher_tokens={name: source for name, (_, source) in refs.items()},
                       **key)
        metrics.update({f"{k}_generator": v for k, v in (score(images, labels) if score else {}).items()})
        rows = [teacher_multi]
        with clock("more generators"):
            rows += self.score_extra(run, extra, labels, first, evaluator, score, metrics)
        rows += [images[first], teacher_one]
        if not extra:                                                    # Di[M]O's row order: generator first
            rows = [images[first], teacher_multi, teacher_one]
        with clock("grid and files"):
            save_image_grid(torch.cat(rows), os.path.join(a.out, "samples.png"), nrow=len(first))
            write_result(a.out, "generator_samples", metrics, images)
            if a.save_samples:
                extra_labels = torch.arange(a.save_samples) % run.teacher.nclass
                np.save(os.path.join(a.out, "samples.npy"),
                        to_uint8(self.one_step_images(run, extra_labels, temperature, a.seed)))
                np.save(os.path.join(a.out, "labels.npy"), extra_labels.numpy())
        with run.rt.autocast(), clock("speed reference"):               # beside the run's times: the machine's speed
            metrics["speed_teacher_images_per_s"] = teacher_images_per_s(run.teacher, self.sampler)
        metrics["speed_reference_amp"] = run.rt.amp       # under --amp it times the bf16 teacher, not eval.py speed's
        metrics["seconds_evaluation"] = clock.seconds
        return metrics

    def score_extra(self, run, extra, labels, first, evaluator, score, metrics):
        """Metrics of the extra one-step generators into metrics; -> their grid rows."""
        rows, a = [], run.args
        for name, (model, t, sigma) in extra.items():
            extra_images = self.one_step_images(run, labels, t, a.seed, model, sigma)
            m = evaluator(extra_images, labels)
            metrics.update({f"fid_{name}": m["fid"], f"class_acc_{name}": m["class_acc"], name: m,
                            f"{name}_temperature": t, f"{name}_sigma": sigma})
            metrics.update({f"{k}_{name}": v for k, v in (score(extra_images, labels) if score else {}).items()})
            rows.append(extra_images[first])
        return rows


# ----------------------------------------------------------------------------------------------------------------
# toy-vocab: the exact oracle.
# ----------------------------------------------------------------------------------------------------------------
class ToyVocabTask:
    grid = None

    def __init__(self, a, rt):
        fill(a, TOY_VOCAB_DEFAULTS, "toy-vocab default")
        if a.joint:
            joint = check_joint(load_joint(a.joint), a.joint)
        else:
            if a.vocab < 2 or a.length < 1 or a.vocab ** a.length > 2 ** 20:
                raise UserError(f"--vocab {a.vocab} --length {a.length}: need V >= 2, L >= 1 and V^L <= 2^20")
            joint = random_joint(a.vocab, a.length, a.seed)
        self.oracle = OracleTeacher(joint)

    def setup(self, a, rt):
        torch.manual_seed(a.seed)
        student = ToyTransformer(self.oracle.vocab, self.oracle.seq_len)
        self.pretrain_loss = pretrain_mdm(student, self.oracle, a.mdm_steps,
                                          generator=torch.Generator().manual_seed(a.seed))
        run = common_setup(a, rt, self.oracle, student)
        run.task = self
        return run

    def samples(self, run, model, n, seed):
        g = torch.Generator().manual_seed(seed)
        labels = torch.zeros(n, dtype=torch.long, device=ddp.model_device(model))
        return generate(model, labels, draw_r_init(run.args.r_init, g), run.args.sigma_init,
                        run.args.gen_temperature, g).cpu()

    def monitor(self, run):
        """TV of the EMA and raw generators, and aux_lag: how far the auxiliary model is from the generator's
        own conditionals, KL(p_theta || p_psi) on masked entries (p_theta from the generator's empirical joint)."""
        n = min(run.args.eval_n, 5000)
        raw = self.samples(run, run.gen, n, 1)
        g = torch.Generator().manual_seed(2)
        x_t, mask = random_mask(raw[:1000], self.oracle.mask_id, run.args.schedule, g)
        with torch.no_grad():
            log_theta = OracleTeacher(empirical(raw, self.oracle.vocab).reshape(self.oracle.p_shape)).logits(x_t)
            log_psi = torch.log_softmax(run.aux.logits(x_t.to(run.rt.device), torch.zeros(len(x_t)).long()), -1)
        lag = (log_theta.exp() * (log_theta - log_psi.cpu())).sum(-1)[mask].mean().item()
        return dict(tv_ema=round(total_variation(self.samples(run, run.ema, n, 1), self.oracle), 4),
                    tv_raw=round(total_variation(raw, self.oracle), 4), aux_lag=round(lag, 4))

    def evaluate(self, run):
        a = run.args
        samples = self.samples(run, run.ema, a.eval_n, a.seed)
        metrics = dict(tv_generator=round(total_variation(samples, self.oracle), 4),
                       tv_generator_raw=round(total_variation(self.samples(run, run.gen, a.eval_n, a.seed),
                                                              self.oracle), 4),
                       **reference_tvs(self.oracle, a.eval_n, a.seed), n_samples=a.eval_n,
                       vocab=self.oracle.vocab, length=self.oracle.seq_len,
                       mdm_pretrain_loss=round(self.pretrain_loss, 4),
                       steps=a.steps, seed=a.seed, divergence=a.divergence, beta=a.beta, lr=a.lr,
                       normalisation=a.normalisation, label_smoothing=a.label_smoothing, r_init=a.r_init,
                       sigma_init=a.sigma_init, aux_updates=a.aux_updates, gen_temperature=a.gen_temperature)
        if a.save_samples:
            extra = self.samples(run, run.ema, a.save_samples, a.seed)
            np.save(os.path.join(a.out, "samples.npy"), extra[..., 0].numpy().astype(np.int64))
        return metrics


def load_joint(path):
    if not os.path.isfile(path):
        raise UserError(f"--joint '{path}' does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UserError(f"--joint '{path}' is not a readable .npy array ({str(e).splitlines()[0][:80]})") from None


def build_task(a, rt):
    if a.teacher == "toy-vocab":
        return ToyVocabTask(a, rt)
    get_preset(a.teacher)
    return ImageTask(a, rt)
