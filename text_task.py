"""What distill.py needs to know about a text-to-image teacher (Meissonic's classes): prompts as conditions, the
recipe's defaults, and the final evaluation on GenEval-toy.

Di[M]O on Meissonic (arXiv 2503.15457, Sec. 5; docs/papers.md 1.4-1.5) is the same loop as for class labels, with
a prompt where the class was:

* **data-free**: the conditions are prompts only (LAION captions in the paper; here the toy world's caption
  generator, ``scenes.training_captions``, or ``--prompts FILE``, one per line); no image is read;
* a batch's prompts are drawn uniformly from the pool and encoded by the frozen CLIP text encoder once per batch
  (``PromptPool.condition``; the negative prompt once per run): a ``meissonic.TextCondition`` is the batch's
  ``labels`` everywhere in distill.py, through the ``run.draw_labels`` seam;
* the **teacher** is guided, w = ``--teacher-cfg`` (the paper's 4; the toy preset's 2), against the **negative
  prompt** as its unconditional branch (``masking.guided_logits``); the **auxiliary model** is unguided; the
  generator is conditional and never guided;
* the timestep is 0 for every network (the official code casts the ratio to long), sigma_init perturbs the output
  of ``embed`` (``MeissonicTransformer.input_embed``), ``embed`` and ``mlm_layer`` are frozen (``FROZEN``).

The evaluation (``TextTask.evaluate``): GenEval-toy's 148 prompts (geneval_toy.py) cycled to ``--eval-n`` samples,
for the one-step generator (EMA), the teacher at its default steps and the teacher at 1 step, on the same prompts
and seed: the six tasks and overall on seen and held-out prompts apart, FID against renders of the same prompts and
the toy CLIP score (``clip_score``) in the toy image tower's space, a grid with a row per model.  The generator's
inference temperature is tuned first on another seed (seed + 1), by GenEval-toy overall on seen prompts.

Shapes: B batch, N tokens, L text positions, J text width, P pooled width.
"""
import os
import time

import torch
import torch.nn.functional as F

import ddp
from config import UserError, get_preset
from data import save_image_grid
from eval import frechet_distance
from generator import draw_r_init, generate
from geneval_rules import score_images, summarise
from geneval_toy import render_features, sampled_images
from meissonic import TextCondition
from scenes import geneval_metadata, training_captions
from tasks import Stopwatch, common_setup, fill
from tasks import build_task as class_task
from teacher import load_meissonic, micro_conds, text_to_image_folder, tokens_to_images
from text_encoder import encode_prompts
from train_t2i import load_image_tower

# Ours, for the toy world (docs/text_to_image.md): the paper's r_init 0.5, FKL, timestep 0, unguided auxiliary
# model and Adam; the toy's lr, steps, batch, EMA and temperatures, as for the class-to-image toy pair.
TEXT_DEFAULTS = dict(eval_n=4 * 148, ema=0.999, train_temperature=1.0, tune_sigma="", recall_margin=0.0)
POOL_SEED = 7                # the toy caption pool's seed (the scenes of train.py t2i are drawn from other seeds)
POOL_SIZE = 20000            # toy captions in the pool; they repeat, about 9,000 are distinct
GRID_PROMPTS = ("a photo of a red circle", "a photo of a square and a plus", "a photo of three triangles",
                "a photo of a blue triangle", "a photo of a circle left of a square",
                "a photo of a yellow plus and a purple square", "two red circles left of a blue square",
                "a photo of a green circle")                            # the last is a held-out pair


def read_prompts(path):
    """--prompts FILE: one prompt per line (UTF-8, blank lines skipped) -> a list; one-line errors otherwise."""
    if not os.path.isfile(path):
        raise UserError(f"--prompts '{path}' does not exist (a text file, one prompt per line)")
    raw = open(path, "rb").read()
    if b"\0" in raw:
        raise UserError(f"--prompts '{path}' is binary, not text (one prompt per line, UTF-8)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--prompts '{path}' is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"--prompts '{path}' holds no prompt (one per line)")
    return prompts


def clip_score(tower, tokenizer, encoder, images, prompts):
    """The toy CLIP score: 100 max(cos(image embedding, text embedding), 0) per image (CLIPScore's form), [B]."""
    with torch.no_grad():
        t = F.normalize(encoder(tokenizer(prompts))["text_embeds"], dim=-1)
        v = F.normalize(tower(images), dim=-1)
    return 100 * (t * v).sum(-1).clamp(min=0)


class PromptPool:
    """Prompts, and the text encoder that turns a batch of them into the condition every network reads."""

    def __init__(self, prompts, tokenizer, encoder, negative_prompt, micro, device):
        self.prompts, self.tokenizer, self.encoder, self.device = prompts, tokenizer, encoder, device
        with torch.no_grad():
            self.neg_hidden, self.neg_pooled = encode_prompts(tokenizer, encoder, [negative_prompt], device)
        self.micro = torch.tensor([micro], device=device)                          # [1, 5]

    def condition(self, prompts):
        """A TextCondition: the prompts' penultimate states and pooled projections, the negative prompt's, the
        micro-conditions, timestep 0 (Di[M]O's)."""
        b = len(prompts)
        with torch.no_grad():
            hidden, pooled = encode_prompts(self.tokenizer, self.encoder, prompts, self.device)
        return TextCondition(hidden, pooled, self.neg_hidden.expand(b, -1, -1), self.neg_pooled.expand(b, -1),
                             self.micro.expand(b, -1), None, False)

    def draw(self, batch, rng):
        """A training batch: prompts drawn uniformly from the pool with the run's generator."""
        idx = torch.randint(len(self.prompts), (batch,), generator=rng)
        return self.condition([self.prompts[i] for i in idx.tolist()])


class TextTask:
    monitor = None

    def __init__(self, a, rt):
        if a.monitor_n:
            raise UserError("--monitor-n is for class-to-image teachers; a text run is scored at its end")
        if a.tokenizer_ckpt:
            raise UserError("--tokenizer-ckpt: a text-to-image folder holds its own VQ model (vqvae/); pass the "
                            "folder as --teacher-ckpt")
        self.preset, self.folder = text_to_image_folder(a.teacher, a.teacher_ckpt, verbose=ddp.is_main())
        p = get_preset(self.preset)
        if "distill" not in p:
            raise UserError(f"preset '{self.preset}' has no distillation settings")
        fill(a, {k: (str(v) if k == "r_init" else v) for k, v in p["distill"].items()}, f"preset {self.preset}")
        fill(a, TEXT_DEFAULTS, "text default")
        self.p, self.sampler = p, dict(p["sampler"])
        self.resolution = p["prompt"]["resolution"]
        self.teacher, self.vq, self.tok, self.enc = load_meissonic(self.folder, self.resolution, ddp.is_main())
        self.vq, self.enc = self.vq.to(rt.device), self.enc.to(rt.device)
        prompts = read_prompts(a.prompts) if a.prompts else training_captions(POOL_SIZE, POOL_SEED)
        self.pool = PromptPool(prompts, self.tok, self.enc, a.negative_prompt,
                               micro_conds(self.resolution, p["prompt"]["aesthetic"]), rt.device)

    def setup(self, a, rt):
        run = common_setup(a, rt, self.teacher, self.teacher)
        if rt.amp:
            run.teacher = run.teacher.to(torch.bfloat16)
        run.draw_labels, run.task = self.pool.draw, self
        return run

    # -- sampling: the teacher's way (the run's negative prompt, its preset's timestep) and the generator's -------
    def teacher_condition(self, prompts):
        return self.pool.condition(prompts)._replace(counter=self.p["prompt"]["timestep"] == "counter")

    def teacher_images(self, run, prompts, settings, seed):
        with run.rt.autocast():
            return sampled_images(run.teacher, self.vq, self.teacher_condition, prompts, settings, seed)

    def one_step_images(self, run, prompts, temperature, seed, model=None, batch=200):
        """The EMA generator's (or model's) one-step images of prompts, at the training sigma_init."""
        g, out = torch.Generator().manual_seed(seed), []
        for i in range(0, len(prompts), batch):
            cond = self.pool.condition(prompts[i:i + batch])
            with run.rt.autocast():
                tokens = generate(model or run.ema, cond, draw_r_init(run.args.r_init, g), run.args.sigma_init,
                                  temperature, g)
            out.append(tokens_to_images(run.teacher, self.vq, tokens))
        return torch.cat(out).float()

    def grid(self, run, path):
        """Rows: generator (EMA, one step), teacher (its default steps), for GRID_PROMPTS."""
        prompts = list(GRID_PROMPTS)
        rows = [self.one_step_images(run, prompts, run.args.gen_temperature, 0),
                self.teacher_images(run, prompts, self.sampler, 0)]
        save_image_grid(torch.cat(rows), path, nrow=len(prompts))

    # -- the final evaluation --------------------------------------------------------------------------------------
    def score(self, images, reps, real, tower):
        """GenEval-toy per split and task, FID against the renders' features, toy CLIP score."""
        prompts = [m["prompt"] for m in reps]
        table = summarise(reps, score_images(images, reps))
        with torch.no_grad():
            fid = frechet_distance(real, tower.features(images))
        clip = clip_score(tower, self.tok, self.enc, images, prompts)
        return dict(table, fid=round(fid, 4), clip_score=round(float(clip.mean()), 3))

    def evaluate(self, run):
        a, clock = run.args, Stopwatch()
        metas = geneval_metadata()
        reps = [metas[i % len(metas)] for i in range(a.eval_n)]
        prompts = [m["prompt"] for m in reps]
        tower = load_image_tower(self.folder).to(run.rt.device)
        with clock("renders"):
            real = render_features(tower, reps, a.seed + 1)
        with clock("teacher samples"):
            teacher = self.teacher_images(run, prompts, self.sampler, a.seed)
            teacher_one = self.teacher_images(run, prompts, dict(self.sampler, steps=1), a.seed)
        with clock("temperature tuning"):
            by_t = {t: self.score(self.one_step_images(run, prompts, t, a.seed + 1), reps, real, tower)
                    for t in a.temperatures}
            temperature = max(by_t, key=lambda t: by_t[t]["seen"]["overall"]) if by_t else a.gen_temperature
        with clock("generator samples"):
            images = self.one_step_images(run, prompts, temperature, a.seed)
        with clock("scores"):
            m = {name: self.score(x, reps, real, tower) for name, x in
                 (("generator", images), ("teacher", teacher), ("teacher_1step", teacher_one))}
        once = min(len(reps), len(metas))                                  # the grid: 8 prompts across the tasks
        first = list(range(0, once, max(1, once // 8)))[:8]
        with clock("grid"):
            save_image_grid(torch.cat([images[first], teacher[first], teacher_one[first]]),
                            os.path.join(a.out, "samples.png"), nrow=len(first))
        timed = prompts[:64]                                                # images a second, side by side
        t0 = time.perf_counter()
        self.one_step_images(run, timed, temperature, 0)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.teacher_images(run, timed, self.sampler, 0)
        teacher_s = time.perf_counter() - t0
        return dict(m, geneval_generator=m["generator"]["seen"]["overall"],
                    geneval_teacher=m["teacher"]["seen"]["overall"],
                    geneval_teacher_1step=m["teacher_1step"]["seen"]["overall"], gen_temperature=temperature,
                    gen_sigma=a.sigma_init, temperature_tuning={t: v["seen"]["overall"] for t, v in by_t.items()},
                    teacher_preset=self.preset, teacher_sampler=self.sampler, eval_n=a.eval_n,
                    prompts=len(metas), seed=a.seed, steps=a.steps, r_init=a.r_init, sigma_init=a.sigma_init,
                    images_per_s=dict(generator=round(len(timed) / gen_s, 1), teacher=round(len(timed) / teacher_s, 1),
                                      speedup=round(teacher_s / gen_s, 2), physical_limit=self.sampler["steps"] * (
                                          1 if self.sampler["guidance"] == 1 else 2)),
                    seconds_evaluation=clock.seconds)


def build_task(a, rt):
    """The task of a teacher: text-to-image (family meissonic) here, the others tasks.py's."""
    if a.teacher != "toy-vocab" and get_preset(a.teacher)["family"] == "meissonic":
        return TextTask(a, rt)
    return class_task(a, rt)
