"""The masking maths shared by every file: the mask schedule, the forward (absorbing) process, how many entries a
sampler step decodes, and classifier-free guidance.  One implementation of each, imported everywhere else.

* ``mask_ratio(r, schedule)``: the fraction masked at time r (MaskBit's and Di[M]O's schedules).
* ``random_mask``: the forward process with an exact count, as Di[M]O's ``get_mask_code`` (training, Di[M]O's
  x_t, the auxiliary loss).
* ``maskbit_masked_after``, ``halton_counts``: how many entries a sampler step leaves masked or decodes, by
  MaskBit's cumulative rule or by Halton-MaskGIT v1.0's (Di[M]O's MaskGIT baseline); ``teacher.sample`` uses both.
* ``cfg``, ``guided_logits``, ``guidance_at``: the CFG convention (stated once, below) and its annealing.

Shapes: B batch, N tokens, S splits, V classes per split, M = N*S entries.

Run: ``python masking.py`` prints the step counts of both samplers for 16 steps on 16x16 tokens.
"""
import math

import torch

from config import UserError


# ----------------------------------------------------------------------------------------------------------------
# The mask schedule and the forward process.
# ----------------------------------------------------------------------------------------------------------------
SCHEDULES = ("arccos", "cosine", "linear", "square", "root")


def mask_ratio(r, schedule="arccos"):
    """Fraction of entries masked at 'time' r in [0, 1] (r = 0: all masked, r = 1: none), MaskBit's definitions:
    arccos acos(r)/(pi/2), cosine cos(r*pi/2), linear 1-r, square 1-r^2, root 1-sqrt(r).
    Training and Di[M]O's re-masking draw r ~ U(0, 1); the sampler uses r = step progress."""
    r = torch.as_tensor(r, dtype=torch.float32)
    if schedule == "arccos":
        return torch.arccos(r) / (math.pi / 2)
    if schedule == "cosine":
        return torch.cos(r * math.pi / 2)
    if schedule == "linear":
        return 1 - r
    if schedule == "square":
        return 1 - r ** 2
    if schedule == "root":
        return 1 - r.sqrt()
    raise ValueError(f"unknown mask schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}")


def random_mask(tokens, mask_id, schedule="arccos", generator=None):
    """Forward (absorbing) process with an exact count, as Di[M]O's get_mask_code: per sample r ~ U(0, 1) and
    round(M * mask_ratio(r)) (at least 1) of the M = N*S entries, chosen uniformly, become mask_id.
    MaskBit's splits are masked independently (an entry is one split of one position).
    Returns (masked tokens [B, N, S], mask [B, N, S] bool)."""
    b = tokens.shape[0]
    m = tokens[0].numel()
    r = torch.rand(b, generator=generator, device=tokens.device)
    count = (m * mask_ratio(r, schedule)).round().clamp(min=1).long()
    rank = torch.rand(b, m, generator=generator, device=tokens.device).argsort(-1).argsort(-1)  # random ranks
    mask = (rank < count[:, None]).reshape(tokens.shape)              # [B, M] -> [B, N, S]
    return torch.where(mask, torch.full_like(tokens, mask_id), tokens), mask


# ----------------------------------------------------------------------------------------------------------------
# Classifier-free guidance.
# ----------------------------------------------------------------------------------------------------------------
def cfg(z_cond, z_uncond, w):
    """Classifier-free guidance, our one convention: z = z_u + w (z_c - z_u); w = 1 is the conditional model.
    MaskBit's ``cond + s (cond - uncond)`` is w = s + 1 (``config.maskbit_scale_to_w``)."""
    return z_uncond + w * (z_cond - z_uncond)


def twice(c):
    """[c; c] on the batch axis: class labels [B], or a condition tuple (text: its tensor fields)."""
    if torch.is_tensor(c):
        return torch.cat([c, c])
    return type(c)(*(torch.cat([x, x]) if torch.is_tensor(x) else x for x in c))


def guided_logits(model, tokens, labels, w):
    """Logits [B, N, S, V] of tokens [B, N, S] under guidance w: one batched pass with the condition and its
    unconditional branch (the null class; for text, the negative prompt).  ``labels``: class ids [B] or a
    condition tuple (meissonic.TextCondition)."""
    if w == 1:
        return model.logits(tokens, labels)
    b = tokens.shape[0]
    drop = torch.arange(2 * b, device=tokens.device) >= b              # first half cond, second half uncond
    z_cond, z_uncond = model.logits(torch.cat([tokens, tokens]), twice(labels), drop).chunk(2)
    return cfg(z_cond, z_uncond, w)


def guidance_at(w, step, steps, anneal="none", scale_pow=1.0):
    """Guidance of one sampler step, annealed from 1 (none) towards w:
    none: w; linear: 1 + (w-1) i/(steps-1) (Halton-MaskGIT v1.0 / Di[M]O);
    cosine: 1 + (w-1)(1 - cos(pi (i/steps)^p))/2 (MaskBit's power-cosine with p = scale_pow).  Both start at 1.
    One step is our choice, not the official one: full guidance w.  MaskBit's cosine would give scale 0 (no
    guidance) and v1.0's linear divides by zero, so their one-step teacher is unguided or undefined.
    maskgen: 2 + (w-2)(1 - cos(pi ((i+1)/steps)^p))/2 (MaskGen's cond + s (cond - uncond) with s rising from 1 on
    the step's ratio (i+1)/steps to its scale w - 1: 2.106 ... 13 over 16 steps at the release's scale 12)."""
    if anneal == "maskgen":
        return 2.0 + (w - 2.0) * (1 - math.cos(math.pi * ((step + 1) / steps) ** scale_pow)) / 2
    if anneal == "none" or steps == 1:
        a = 1.0
    elif anneal == "linear":
        a = step / (steps - 1)
    elif anneal == "cosine":
        a = (1 - math.cos(math.pi * (step / steps) ** scale_pow)) / 2
    else:
        raise ValueError(f"unknown guidance annealing '{anneal}'; choose none, linear, cosine or maskgen")
    return 1.0 + (w - 1.0) * a


# ----------------------------------------------------------------------------------------------------------------
# How many entries a sampler step decodes.
# ----------------------------------------------------------------------------------------------------------------
# Two official samplers differ in how many entries a step decodes and how the confidence noise is annealed:
# 'maskbit' (MaskBit's sampler, cumulative): after step i, floor(mask_ratio((i+1)/T) * M) entries stay masked, and
#     the Gumbel noise is scaled by 1 - (i+1)/T;
# 'halton' (Halton-MaskGIT v1.0, vendored in Di[M]O as MaskGit_src/Trainer/vit.py, the sampler of Di[M]O's MaskGIT
#     baseline): step i decodes count_i entries, count_i proportional to mask_ratio(r_i) at r = linspace(1, 0, T)
#     (``halton_counts``), and the Gumbel noise is scaled by 1 - i/(T-1).
STEP_COUNTS = ("maskbit", "halton")


def maskbit_masked_after(step, steps, m, schedule="arccos"):
    """MaskBit's cumulative rule: entries left masked after step i of T, floor(mask_ratio((i+1)/T) * m) (0-dim
    int64; the sampler keeps at least 1 masked while steps remain and decodes at least 1 per step)."""
    return (mask_ratio((step + 1) / steps, schedule).clamp(1e-6, 1) * m).floor().long()


def halton_counts(steps, m, schedule="arccos"):
    """Halton-MaskGIT v1.0's entries decoded per step (its ``adap_sche``): mask_ratio(linspace(1, 0, T)),
    normalised to sum to m, rounded, zeros raised to 1, the remainder added to the last step.  [T] int64.
    16 steps, m = 256: 1, 6, 9, 10, 12, 14, 15, 16, 18, 19, 20, 21, 22, 23, 25, 25.  One step decodes all m (v1.0
    divides by zero there).  Where rounding leaves the last step nothing to decode (too many steps for m, e.g. 64 on
    64) v1.0 fails; so does this, with a message."""
    if steps == 1:
        return torch.tensor([m])
    val = mask_ratio(torch.linspace(1, 0, steps), schedule)
    counts = (val / val.sum() * m).round()
    counts[counts == 0] = 1
    counts[-1] += m - counts.sum()
    if counts[-1] < 1:
        raise UserError(f"Halton-MaskGIT's step counts are undefined for {steps} steps over {m} entries (its last "
                        f"step would decode {int(counts[-1])}); use fewer --steps or --step-counts maskbit")
    return counts.long()


if __name__ == "__main__":
    m, steps = 256, 16
    left = [max(1, int(maskbit_masked_after(i, steps, m))) for i in range(steps - 1)] + [0]
    print("maskbit:", [a - b for a, b in zip([m] + left, left)])
    print("halton: ", halton_counts(steps, m).tolist())
