"""Di[M]O: distil a masked diffusion teacher into a one-step generator (Zhu et al., arXiv 2503.15457, Alg. 1).

One iteration, on-policy (every state comes from the generator's own samples):

  1. x_init = token_init(r_init); z = G_theta(perturb(embed(x_init), sigma_init), c)   logits of all N*S entries
  2. x ~ softmax(z / tau)                                               (no gradient through the draw)
  3. x_t = random_mask(x)          the teacher's schedule, t ~ U(0, 1), exact count     (pseudo-intermediate state)
  4. q = softmax(cfg(phi(x_t, c), phi(x_t, null), w)),  p = softmax(psi(x_t, c))       teacher and auxiliary model
  5. g = dD(q || p)/dz per masked entry (Eqs. 14-16), 0 on visible entries (Eq. 5)
  6. loss = 1/2 || z - sg(z - g) ||^2 / norm,  theta <- Adam;  EMA
  7. auxiliary model psi: a fresh x' ~ G_theta, x'_t = random_mask(x'), cross-entropy(psi(x'_t), x') on the
     masked entries, label smoothing 0.1: psi tracks the generator's conditionals p_theta(x_0 | x_t).

The approximations of Eq. 7: the unknown p_theta(x_0^i | x_t) is replaced by the auxiliary model p_psi, and the
Jacobian dz_theta(x_t)/dtheta by dz_theta(x_init)/dtheta, so the per-entry gradient g is pushed into the
generator's logits z computed from x_init.

Why the surrogate has exactly the right gradient.  Let g be any tensor that does not depend on theta (here it is
computed under no_grad).  For L(z) = 1/2 sum_k (z_k - sg(z_k - g_k))^2 the stop-gradient makes sg(z - g) a
constant c with value z - g, so dL/dz_k = z_k - c_k = z_k - (z_k - g_k) = g_k.  Back-propagating L therefore
sends exactly g into dz/dtheta: a gradient step on L is a step along -g dz/dtheta, which is Eq. 7.  The *value*
of L is 1/2 sum g^2 (not the divergence); the divergence itself is logged separately.

The divergence gradients w.r.t. the logits z of p = softmax(z) (p_psi stands in for p_theta), q = p_phi:
  FKL  D = KL(q || p):                g = p - q                                               (Eq. 14)
  RKL  D = KL(p || q):                g = p * (log p - log q - KL(p || q))                    (Eq. 15)
  Jeffreys_beta  D = (1-beta) FKL + beta RKL:   g = (1-beta) g_FKL + beta g_RKL            (Eqs. 8, 16)
beta may be negative (the paper's best ImageNet value is -0.2; the released config uses FKL, beta = 0).

Training temperature tau (ours; the paper's is tau = 1): the on-policy draws of steps 2 and 7 come from
softmax(z / tau), and the surrogate is taken on z / tau, so that it is softmax(z / tau) that is matched to the
teacher; dL/dz = g / tau.  It only rescales the generator's output layer (z / tau are its logits), which starts it
from the teacher sharpened to temperature tau.  Sampled at temperature T, the generator then draws from the matched
distribution at temperature T / tau: the toy default tau = 0.2 puts the toy's inference temperatures 0.1-0.2 at
0.5-1, where tau = 0.5 put them at 0.2-0.4 (more recall; at the same FID on one seed of three,
docs/soft_dimo.md); the released presets keep 1.

Normalisation of the sum over masked entries: 'mean' (the paper, Eq. 5: 1/L_M per sample, then the batch mean)
or 'sum' (the released code: sum over masked entries divided by the batch size, so the step grows with L_M).
Default: 'sum' for image teachers (what was run), 'mean' for toy-vocab (docs/toy_vocab.md has the measurements).

Run:  python distill.py --teacher maskbit                   (the bundled toy MaskBit pair, a few minutes on CPU)
      python distill.py --teacher meissonic     (the toy text-to-image world; prompts only: text_task.py)
      python distill.py --teacher toy-vocab --vocab 4 --length 4 --seed 0       (known answer: TV to the target)
      torchrun --nproc_per_node=2 distill.py ...             (DDP; docs/reliability.md)
Shapes: B batch, N tokens, S splits, V classes per split.
"""
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import ddp
from checkpoints import load_checkpoint, save_checkpoint
from config import ArgumentParser, UserError, check_range, cli, runtime
from generator import draw_r_init, generate, parse_r_init, sample_tokens, sigma_at, token_init
from masking import guided_logits, random_mask
from optim import ema_update
from text_task import build_task

DIVERGENCES = ("fkl", "rkl", "jeffreys")


# ----------------------------------------------------------------------------------------------------------------
# The distillation loss.
# ----------------------------------------------------------------------------------------------------------------
def divergence_grad(logits_teacher, logits_aux, divergence="fkl", beta=0.0):
    """-> (g = dD(p_teacher || p)/dz at p = softmax(logits_aux), [..., V];  D per entry, [...])."""
    beta = {"fkl": 0.0, "rkl": 1.0}.get(divergence, beta)
    log_q, log_p = F.log_softmax(logits_teacher.float(), -1), F.log_softmax(logits_aux.float(), -1)
    q, p = log_q.exp(), log_p.exp()
    fkl = (q * (log_q - log_p)).sum(-1)                                  # KL(q || p)
    rkl = (p * (log_p - log_q)).sum(-1)                                  # KL(p || q)
    g_fkl = p - q                                                        # Eq. 14
    g_rkl = p * (log_p - log_q - rkl[..., None])                         # Eq. 15
    return (1 - beta) * g_fkl + beta * g_rkl, (1 - beta) * fkl + beta * rkl  # Eqs. 8, 16


def entry_weights(mask, normalisation):
    """Weight of each entry's gradient: 1/B on masked entries ('sum') or 1/(B L_M) per sample ('mean')."""
    b = mask.shape[0]
    if normalisation == "sum":
        return mask.float() / b
    masked = mask.flatten(1).sum(1).clamp(min=1).float()                # L_M per sample
    return mask.float() / (b * masked.view(-1, *[1] * (mask.dim() - 1)))


def dimo_surrogate(z, g, mask, normalisation="sum"):
    """1/2 sum w (z - sg(z - g))^2 with per-entry weights w: its gradient w.r.t. z is w * g (see the docstring)."""
    w = entry_weights(mask, normalisation)[..., None]
    g = torch.where(mask[..., None], g, torch.zeros_like(g)).detach()    # only masked entries of x_t (Eq. 5)
    return 0.5 * (w * (z.float() - (z.float() - g).detach()) ** 2).sum()


def aux_loss(aux_call, mask_id, x, labels, schedule, label_smoothing, generator=None):
    """The auxiliary model as a masked model of the generator's samples x [B, N, S] (aux_call: tokens, labels ->
    logits)."""
    x_t, mask = random_mask(x, mask_id, schedule, generator)
    logits = aux_call(x_t, labels)                                       # [B, N, S, V]
    return F.cross_entropy(logits[mask].float(), x[mask], label_smoothing=label_smoothing)


def dimo_loss(run, z, labels):
    """Steps 2-6 on the generator's logits z [B, N, S, V].  -> (surrogate loss, mean divergence, the hard draw x)."""
    a, rng = run.args, run.rng
    with torch.no_grad():
        x = sample_tokens(z.detach(), a.train_temperature, rng)           # the on-policy draw, at tau
        x_t, mask = random_mask(x, run.teacher.mask_id, a.schedule, rng)
        with run.rt.autocast():
            run.teacher.train(a.teacher_dropout)                         # --teacher-dropout: the official run
            z_teacher = guided_logits(run.teacher, x_t, labels, a.teacher_cfg)
            run.teacher.eval()                                           # its samples (grids, FID) never drop out
            z_aux = run.aux.logits(x_t, labels)
        g, value = divergence_grad(z_teacher, z_aux, a.divergence, a.beta)
    return dimo_surrogate(z / a.train_temperature, g, mask, a.normalisation), value[mask].mean().item(), x


def generator_loss(run, labels, x_init, sigma):
    """Step 1, then w_dimo times the Di[M]O loss plus the extra terms of a later stage, all on the same logits z.
    The seam for soft_refine.py: ``run.w_dimo`` (1 here; 0 = no Di[M]O term) and ``run.extra_terms``, a list of
    fn(run, z, labels) -> (loss, stats).  -> (loss, statistics for the log)."""
    with run.rt.autocast():
        z = run.gen_call(labels, x_init, sigma, run.rng)                 # [B, N, S, V], with gradient
    stats = {}
    if run.w_dimo > 0:
        loss_dm, stats["divergence"], x = dimo_loss(run, z, labels)
        loss = run.w_dimo * loss_dm
        stats["loss_dm"] = loss_dm.item()
    else:
        loss, x = z.sum() * 0, sample_tokens(z.detach(), run.args.train_temperature, run.rng)
    for term in run.extra_terms:
        extra, extra_stats = term(run, z, labels)
        loss = loss + extra
        stats.update(extra_stats)
    with torch.no_grad():
        p = torch.softmax(z.detach().float(), -1)
        stats.update(entropy=-(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean().item(),
                     unique_tokens=torch.unique(run.gen.to_indices(x)).numel())  # distinct ids in the batch
    return loss, stats


class NonFinite(Exception):
    """A NaN or Inf in a loss or gradient norm (the official code zeroes these silently; we stop or skip)."""


def check_finite(name, value, step):
    """Raise NonFinite naming the step and the quantity; every rank takes the same decision under DDP."""
    if not ddp.all_ok(bool(torch.isfinite(torch.as_tensor(value)).all())):
        raise NonFinite(f"step {step}: {name} is not finite ({float(value)})")


# ----------------------------------------------------------------------------------------------------------------
# The run: setup, loop, checkpoints, evaluation.
# ----------------------------------------------------------------------------------------------------------------
def state_dict_of(run, step, rng):
    """Everything a bitwise --resume needs, plus the modules and optimisers of a later stage (``run.extra_state``)."""
    return dict(step=step, args=vars(run.args), generator=run.gen.state_dict(), ema=run.ema.state_dict(),
                aux=run.aux.state_dict(), opt_generator=run.opt_g.state_dict(),
                opt_aux=run.opt_aux.state_dict(), rng=rng.get_state(), torch_rng=torch.get_rng_state(),
                **{name: obj.state_dict() for name, obj in run.extra_state.items()})


def restore(run, ckpt):
    """Load a checkpoint written by save_run into a freshly set-up run (strictly), for --resume."""
    for key, module in (("generator", run.gen), ("ema", run.ema), ("aux", run.aux)):
        module.load_state_dict(ckpt[key], strict=True)
    run.opt_g.load_state_dict(ckpt["opt_generator"])
    run.opt_aux.load_state_dict(ckpt["opt_aux"])
    for name, obj in run.extra_state.items():
        obj.load_state_dict(ckpt[name])
    run.rng.set_state(ckpt["rng"])
    torch.set_rng_state(ckpt["torch_rng"])
    run.step = ckpt["step"]


def save_run(run, step, rng):
    if ddp.is_main():
        save_checkpoint(state_dict_of(run, step, rng), os.path.join(run.args.out, "checkpoint.pt"))
    ddp.barrier()


def generator_update(run, step, r_init, sigma):
    """Steps 1-6 over --grad-accum micro-batches, one clipped Adam step, EMA.  -> statistics for the log."""
    a, rng = run.args, run.rng
    run.opt_g.zero_grad(set_to_none=True)
    for _ in range(a.grad_accum):
        labels = run.draw_labels(a.batch_size, rng)                      # class ids [B], or prompts' conditions
        x_init = token_init(run.gen, a.batch_size, r_init, rng).to(run.rt.device)
        loss, stats = generator_loss(run, labels, x_init, sigma)
        check_finite("generator loss", loss.item(), step)
        (loss / a.grad_accum).backward()
    gnorm = torch.nn.utils.clip_grad_norm_(run.gen.parameters(), a.clip if a.clip > 0 else float("inf"))
    check_finite("generator gradient norm", gnorm.item(), step)
    run.opt_g.step()
    ema_update(run.ema, run.gen, a.ema, step)
    return dict(stats, loss=loss.item(), grad_norm=gnorm.item())


def aux_update(run, step, sigma):
    """Step 7, --aux-updates times: the auxiliary model learns the generator's fresh samples."""
    a, rng = run.args, run.rng
    for _ in range(a.aux_updates):
        run.opt_aux.zero_grad(set_to_none=True)
        for _ in range(a.grad_accum):
            with torch.no_grad():
                labels = run.draw_labels(a.batch_size, rng)
                x_fresh = generate(run.gen, labels, draw_r_init(a.r_init, rng), sigma, a.train_temperature, rng)
            with run.rt.autocast():
                loss = aux_loss(run.aux_call, run.aux.mask_id, x_fresh, labels, a.schedule, a.label_smoothing, rng)
            check_finite("auxiliary loss", loss.item(), step)
            (loss / a.grad_accum).backward()
        run.opt_aux.step()
    return dict(loss_aux=loss.item())


def train(run):
    """The loop of Alg. 1.  run (tasks.py): args, rt, teacher, gen, aux, ema, gen_call, aux_call (the DDP-aware
    training passes), opt_g, opt_aux, task, rng, step."""
    a, rng = run.args, run.rng
    log = open(os.path.join(a.out, "log.jsonl"), "a") if ddp.is_main() else None
    bar = tqdm(range(run.step, a.steps), initial=run.step, total=a.steps, desc="distill", mininterval=2,
               disable=not ddp.is_main())
    t0 = time.time()
    for step in bar:
        lr_scale = min(1.0, (step + 1) / a.warmup) if a.warmup > 0 else 1.0  # linear warm-up, then constant ...
        decay = min(1.0, (a.steps - step) / (a.lr_decay * a.steps)) if a.lr_decay > 0 else 1.0  # ... or to 0
        for opt, lr in ((run.opt_g, a.lr * lr_scale * decay), (run.opt_aux, a.lr_aux * lr_scale)):
            for group in opt.param_groups:
                group["lr"] = lr
        r_init, sigma = draw_r_init(a.r_init, rng), sigma_at(a.sigma_init, step, a.sigma_warmup)
        try:
            stats = dict(generator_update(run, step, r_init, sigma), **aux_update(run, step, sigma))
            for hook in run.after_step:                                  # e.g. soft_refine.py's discriminator
                stats.update(hook(run, step, lr_scale))
        except NonFinite as e:
            if not a.skip_nonfinite:
                raise UserError(f"{e}; stopped, the last checkpoint in {a.out} is intact (lower --lr, or pass "
                                f"--skip-nonfinite to skip such steps)") from None
            print(f"warning: {e}; step skipped (--skip-nonfinite)")
            for opt in (run.opt_g, run.opt_aux, *run.extra_state.values()):
                if isinstance(opt, torch.optim.Optimizer):
                    opt.zero_grad(set_to_none=True)
            stats = dict(skipped=True)
        done = step + 1
        if log is not None and (step % a.log_every == 0 or done == a.steps):
            record = dict(step=done, r_init=round(r_init, 3), sigma=sigma, lr=a.lr * lr_scale * decay,
                          seconds=round(time.time() - t0, 1), **{k: round(v, 6) for k, v in stats.items()})
            if run.task.monitor is not None and (step % a.eval_every == 0 or done == a.steps):
                record.update(run.task.monitor(run))
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(div=f"{stats.get('divergence', float('nan')):.4f}")
        if ddp.is_main() and run.task.grid is not None and a.grid_every > 0 and done % a.grid_every == 0:
            run.task.grid(run, os.path.join(a.out, f"grid_{done:06d}.png"))
        if done % a.save_every == 0 or done == a.steps:
            save_run(run, done, rng)
    if log is not None:
        log.close()


def runtime_args(p):
    """The flags every training script shares (also soft_refine.py's)."""
    p.add_argument("--skip-nonfinite", action="store_true", help="skip steps with NaN/Inf instead of stopping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast (on CPU it pays only with bf16 units such as AMX: docs/speed.md)")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer passes")


def build_parser():
    p = ArgumentParser(prog="distill.py", description="Di[M]O: distil a masked teacher into a one-step generator")
    p.add_argument("--teacher", default="maskbit", help="preset, or 'toy-vocab' (python config.py lists presets)")
    p.add_argument("--teacher-ckpt", help="teacher weights (default: the bundled ones for toy presets; text-to-image: "
                   "the released folder)")
    p.add_argument("--prompts", help="text teachers: a file of prompts, one per line (default: the toy captions)")
    p.add_argument("--negative-prompt", help="text teachers: the teacher's CFG branch (default: the preset's)")
    p.add_argument("--tokenizer-ckpt", help="tokenizer weights")
    p.add_argument("--out", default="runs/distill", help="output folder")
    p.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (its settings are reused)")
    p.add_argument("--steps", type=int, help="generator updates (default per teacher)")
    p.add_argument("--batch-size", type=int, help="per-process batch (default per teacher)")
    p.add_argument("--lr", type=float, help="generator learning rate (Adam, constant after warm-up)")
    p.add_argument("--lr-aux", type=float, help="auxiliary-model learning rate (default: --lr)")
    p.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    p.add_argument("--lr-decay", type=float, help="the generator's lr decays linearly to 0 over this final fraction "
                   "of the steps (0: constant, the paper's; default per teacher); the auxiliary model's stays, so "
                   "that it keeps up with the generator")
    p.add_argument("--clip", type=float, default=1.0, help="generator gradient-norm clipping (0: off)")
    p.add_argument("--ema", type=float, help="EMA decay of the generator, with warm-up (default per teacher: "
                   "0.9999 for images, 0.99 for toy-vocab)")
    p.add_argument("--aux-updates", type=int, help="auxiliary updates per generator update (default per teacher)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per update (memory: batch / K)")
    p.add_argument("--ema-cpu", action="store_true", help="keep the generator's EMA copy in CPU memory")
    p.add_argument("--divergence", default="fkl", help="fkl | rkl | jeffreys")
    p.add_argument("--beta", type=float, default=0.0, help="Jeffreys: D = (1-beta) FKL + beta RKL")
    p.add_argument("--normalisation", choices=("sum", "mean"), help="'sum' (code) or 'mean' (paper)")
    p.add_argument("--label-smoothing", type=float, help="auxiliary cross-entropy smoothing (paper: 0.1)")
    p.add_argument("--r-init", help="masked fraction of x_init, e.g. 0.6, or a range 0.1:0.9")
    p.add_argument("--sigma-init", type=float, help="embedding perturbation of the generator input")
    p.add_argument("--sigma-warmup", type=int, default=0, help="warm sigma up linearly over this many steps")
    p.add_argument("--teacher-cfg", type=float, help="teacher guidance w during distillation (1: none)")
    p.add_argument("--teacher-dropout", action="store_true", help="the teacher's distillation passes in train mode "
                   "(dropout on), as the official MaskGIT run did by accident; default: eval mode")
    p.add_argument("--schedule", help="mask schedule for x_t and the auxiliary model (arccos; Meissonic: cosine)")
    p.add_argument("--train-temperature", type=float, help="tau: training draws from softmax(z / tau), and "
                   "softmax(z / tau) is what is matched (1: the paper's; default per preset)")
    p.add_argument("--gen-temperature", type=float, help="generator inference temperature; 'tune' below")
    p.add_argument("--tune-temperature", help="comma-separated temperatures tried on a separate seed before the "
                   "final evaluation (default per preset; '' to skip)")
    p.add_argument("--gen-sigma", type=float, help="the input perturbation at inference (default: tuned, else "
                   "--sigma-init)")
    p.add_argument("--tune-sigma", help="comma-separated inference sigmas tried, with --sigma-init, after the "
                   "temperature (default per preset; '' to skip)")
    p.add_argument("--recall-margin", type=float, help="the sigma tuning aims recall at the teacher's minus this "
                   "margin (default per preset)")
    p.add_argument("--eval-n", type=int, help="samples per final measurement")
    p.add_argument("--eval-data", help="held-out images for FID: 'toy' (default for bundled teachers) or a folder")
    p.add_argument("--features", help="feature network for FID (default: assets/eval_features.pt)")
    p.add_argument("--cache", default="runs/cache", help="exact cache of the teacher's reference samples, keyed "
                   "by its weights, sampler, labels and seed; the shipped reference is read too ('': sample anew)")
    p.add_argument("--save-samples", type=int, default=0, help="also save this many samples as .npy")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=200, help="in-training monitor (toy-vocab TV; image FID with "
                   "--monitor-n) every N steps")
    p.add_argument("--monitor-n", type=int, default=0, help="image teachers: in-training FID of the EMA generator "
                   "on N samples (0: off)")
    p.add_argument("--monitor-temperature", type=float, help="its fixed sampling temperature (default: "
                   "--gen-temperature; the tuned one is only known at the end)")
    p.add_argument("--grid-every", type=int, default=0, help="side-by-side sample grid every N steps (0: end)")
    p.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (and at the end)")
    runtime_args(p)
    p.add_argument("--joint", help="toy-vocab: a .npy of shape (V,)*L summing to 1")
    p.add_argument("--vocab", type=int, default=4, help="toy-vocab: V of the random joint")
    p.add_argument("--length", type=int, default=4, help="toy-vocab: L of the random joint")
    p.add_argument("--mdm-steps", type=int, default=600, help="toy-vocab: masked-model pretraining of the student")
    return p


def check_args(a):
    """Every impossible value gets a one-line error before anything is loaded or written."""
    if a.divergence not in DIVERGENCES:
        raise UserError(f"unknown divergence '{a.divergence}'; choose one of {', '.join(DIVERGENCES)}")
    if not math.isfinite(a.beta) or not -1 <= a.beta <= 1:
        raise UserError(f"--beta {a.beta}: D = (1-beta) FKL + beta RKL needs a finite beta in [-1, 1] "
                        f"(a divergence for beta in [0, 1]; the paper also uses -0.4 ... 0)")
    for name in ("steps", "batch_size", "aux_updates", "grad_accum", "log_every", "eval_every", "save_every",
                 "eval_n"):
        check_range("--" + name.replace("_", "-"), getattr(a, name), low=1)
    for name in ("warmup", "sigma_warmup", "save_samples", "grid_every", "mdm_steps", "monitor_n"):
        check_range("--" + name.replace("_", "-"), getattr(a, name), low=0)
    check_range("--lr", a.lr, low=0, low_open=True)
    check_range("--lr-aux", a.lr_aux, low=0, low_open=True)
    check_range("--sigma-init", a.sigma_init, 0, 1, high_open=True)
    check_range("--ema", a.ema, 0, 1, high_open=True)
    check_range("--label-smoothing", a.label_smoothing, 0, 1, high_open=True)
    check_range("--teacher-cfg", a.teacher_cfg, low=0)
    check_range("--gen-temperature", a.gen_temperature, low=0, low_open=True)
    check_range("--train-temperature", a.train_temperature, low=0, low_open=True)
    if a.gen_sigma is not None:
        check_range("--gen-sigma", a.gen_sigma, 0, 1, high_open=True)
    check_range("--recall-margin", a.recall_margin, 0, 1)
    if a.monitor_n > 0 and a.teacher == "toy-vocab":
        raise UserError("--monitor-n is for image teachers; toy-vocab monitors TV every --eval-every steps anyway")
    if a.monitor_temperature is not None:
        check_range("--monitor-temperature", a.monitor_temperature, low=0, low_open=True)
    check_range("--clip", a.clip, low=0)
    check_range("--lr-decay", a.lr_decay, 0, 1)
    a.temperatures = [check_range("--tune-temperature", float(t), low=0, low_open=True)
                      for t in a.tune_temperature.split(",") if t.strip()] if a.tune_temperature else []
    a.sigmas = [check_range("--tune-sigma", float(v), 0, 1, high_open=True)
                for v in a.tune_sigma.split(",") if v.strip()] if a.tune_sigma else []


# Settings that runs saved before their flag existed lack: the values those runs had (also read by soft_refine.py).
SAVED_BEFORE_FLAGS = dict(train_temperature=1.0, gen_sigma=None, tune_sigma="", recall_margin=0.0)


def setup_run(a):
    """Parsed flags (or the run saved in a.resume) -> (run, task): defaults filled, settings checked, models loaded,
    the saved state restored.  Writes nothing."""
    resume = load_checkpoint(os.path.join(a.resume, "checkpoint.pt"), "run checkpoint") if a.resume else None
    if resume is not None:                                               # the saved run's settings win
        steps, device = a.steps, a.device
        saved = {**SAVED_BEFORE_FLAGS, **resume["args"]}
        a.__dict__.update({k: v for k, v in saved.items() if k not in ("resume", "device")})
        a.steps = steps or a.steps
        a.device, a.out, a.resume = device, a.resume, a.resume
    rt = runtime(ddp.local_device(a.device), a.amp, a.compile)
    task = build_task(a, rt)                                             # fills per-teacher defaults, loads models
    a.lr_aux = a.lr_aux or a.lr
    a.r_init = parse_r_init(a.r_init) if isinstance(a.r_init, str) else a.r_init
    check_args(a)
    torch.manual_seed(a.seed * 1000 + ddp.rank())                       # dropout's stream (checkpointed: torch_rng)
    run = task.setup(a, rt)
    if a.monitor_n > 0:                                                  # image teachers: FID along training
        task.monitor = task.fid_monitor(a, a.monitor_temperature or a.gen_temperature, a.monitor_n)
    rng = torch.Generator().manual_seed(a.seed * 1000 + ddp.rank())      # per-rank stream
    run.rng, run.step = rng, 0
    if resume is not None:
        restore(run, resume)
        if ddp.is_main():
            print(f"resumed {a.out} at step {run.step} of {a.steps}")
            note_new_total(a, resume["args"]["steps"])
    return run, task


def note_new_total(a, saved_steps):
    """A resume that changes --steps moves a decaying lr's schedule (it follows the total): say so (main rank)."""
    if a.lr_decay > 0 and a.steps != saved_steps:
        print(f"note: --steps {a.steps} replaces the run's {saved_steps}, and the decaying lr (--lr-decay "
              f"{a.lr_decay}) follows the new total from here on")


def main(argv=None):
    a = build_parser().parse_args(argv)
    run, task = setup_run(a)
    os.makedirs(a.out, exist_ok=True)
    train_and_evaluate(run, lambda: task.evaluate(run))


def train_and_evaluate(run, evaluate):
    """config.json, the loop, then on rank 0 evaluate() -> metrics.json (also soft_refine.py's ending)."""
    a = run.args
    if ddp.is_main():
        with open(os.path.join(a.out, "config.json"), "w") as f:
            json.dump(dict(vars(a), world_size=ddp.world_size(), global_batch=a.batch_size * ddp.world_size()),
                      f, indent=1, default=str)
    t0 = time.perf_counter()
    train(run)
    seconds_training = round(time.perf_counter() - t0, 1)
    sums = ddp.checksums(run.gen, run.ema, run.aux, *[m for m in run.extra_state.values()
                                                       if isinstance(m, torch.nn.Module)])
    if ddp.is_main():
        t0 = time.perf_counter()
        metrics = dict(evaluate(), world_size=ddp.world_size(), global_batch=a.batch_size * ddp.world_size(),
                       ranks_identical=all(s == sums[0] for s in sums), seconds_training=seconds_training)
        metrics["seconds_evaluation_total"] = round(time.perf_counter() - t0, 1)
        with open(os.path.join(a.out, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1)
        print(json.dumps(metrics))
    ddp.cleanup(run)


if __name__ == "__main__":
    cli(main)
