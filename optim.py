"""Training helpers every trainer shares (distill.py, soft_refine.py, train.py), on the ground floor so that none of
them imports another trainer: the learning-rate schedule, the EMA of the weights, a checked and clipped step.

* ``lr_at``: linear warm-up, then cosine decay to 10% of the base rate (train.py's toy tokenizer and teacher).
* ``ema_update``: ema <- d ema + (1 - d) theta with Di[M]O's warm-up d = min(decay, (1 + step) / (10 + step)).
* ``optimise``: one optimiser step with the gradient norm clipped to 1; a NaN or Inf loss stops with the step named.
* ``masked_ce``, ``decay_groups``: the masked teachers' loss and AdamW groups (train.py, train_t2i.py); ``psnr``.

Run ``python optim.py`` to print the EMA decay over the first steps.
"""
import math

import torch
import torch.nn.functional as F

from config import UserError


def lr_at(step, total, base, warmup):
    """Linear warm-up, then cosine decay to 10% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


@torch.no_grad()
def ema_update(ema, model, decay, step):
    """ema <- d ema + (1 - d) model with the warm-up d = min(decay, (1 + step) / (10 + step)) (as Di[M]O)."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(d).add_(p.detach().to(e.device), alpha=1 - d)


def optimise(opt, model, loss, what, step):
    """One clipped optimiser step; a NaN or Inf loss stops training with a message naming the step."""
    if not torch.isfinite(loss):
        raise UserError(f"step {step}: {what} loss is not finite ({loss.item()}); stopped (lower --lr)")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def psnr(a, b):
    """Mean PSNR in dB of images in [0, 1]."""
    mse = ((a.clamp(0, 1) - b) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean().item()


def masked_ce(logits, targets, mask, label_smoothing=0.1):
    """Cross-entropy of logits [B, N, S, V] against targets [B, N, S] over the masked entries only (ours; MaskBit's
    MLMLoss averages over all entries)."""
    return F.cross_entropy(logits[mask], targets[mask], label_smoothing=label_smoothing)


def decay_groups(model, weight_decay=0.045):
    """AdamW parameter groups: matrices decay, embeddings (pos_emb, class_emb) and 1-D parameters do not (ours;
    MaskBit decays every parameter)."""
    decays = {n: p.dim() >= 2 and "emb" not in n for n, p in model.named_parameters()}
    return [dict(params=[p for n, p in model.named_parameters() if decays[n]], weight_decay=weight_decay),
            dict(params=[p for n, p in model.named_parameters() if not decays[n]], weight_decay=0.0)]


if __name__ == "__main__":
    print("EMA decay d at steps 0, 10, 100, 1000, 10000 (decay 0.9999):",
          [round(min(0.9999, (1 + s) / (10 + s)), 4) for s in (0, 10, 100, 1000, 10000)])
