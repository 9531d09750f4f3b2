"""GenEval-toy: the toy text-to-image world's teacher on GenEval's six tasks, scored by geneval_rules.py.

The teacher's table (``python geneval_toy.py teacher --steps-list 1,2,4,8,16,32,48``): every GenEval-toy prompt
sampled ``--per-prompt`` times at each number of steps, scored per task on seen and held-out prompts apart, and the
FID of the samples against renders of the same prompts in the toy image tower's feature space (train_t2i.py).
``python geneval_toy.py sample --geneval-out DIR`` writes samples in GenEval's folder layout (DIR/00000/metadata.jsonl,
DIR/00000/samples/0000.png, ...), for GenEval-toy's prompts or, with ``--metadata``, GenEval's own
evaluation_metadata.jsonl, so that a user with a GPU scores a released model with the official GenEval.

Run: ``python geneval_toy.py detector`` (accuracy on ground-truth renders per task, and on renders with a deliberate
error, which must fail, and on noise: random VQ ids decoded, ``noise_floor``); ``python geneval_toy.py tokenizer``
(the same renders through the VQ model: the ceiling of
any teacher on it; what its ids leave the teacher, ``token_report``; how near-equal codes decode,
``second_code_report``); ``python geneval_toy.py metadata --out evaluation_metadata.jsonl``.

Shapes: B images, H x W pixels, h x w ids.
"""
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from checkpoints import atomic_write
from config import ArgumentParser, UserError, check_range, get_preset
from data import save_image_grid, to_uint8
from eval import frechet_distance
from geneval_rules import check_detector, noise_floor, score_images, summarise
from scenes import SHAPES, SIZE, TASKS, geneval_metadata, render_batch, scene_for
from teacher import add_sampler_args, load_meissonic, micro_conds, prompt_condition, sample, sampler_settings
from teacher import text_to_image_folder, tokens_to_images
from train_t2i import background_patches, code_bits_per_patch, entropy_bits, load_image_tower, patch_contents


# ----------------------------------------------------------------------------------------------------------------
# Sampling a teacher on the prompts: the table over steps, GenEval's folder layout.
# ----------------------------------------------------------------------------------------------------------------
def read_metadata(path):
    """A GenEval evaluation_metadata.jsonl (GenEval-toy's when path is None) -> a list of dicts."""
    if path is None:
        return geneval_metadata()
    if not os.path.isfile(path):
        raise UserError(f"--metadata '{path}' does not exist (GenEval's prompts/evaluation_metadata.jsonl)")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    bad = [i for i, r in enumerate(rows) if not isinstance(r, dict) or "prompt" not in r or "tag" not in r]
    if bad or not rows:
        raise UserError(f"--metadata '{path}': line {bad[0] + 1 if bad else 1} is not GenEval metadata (a JSON object "
                        f"with 'tag', 'include' and 'prompt')")
    return rows


def sampled_images(model, vq, condition, prompts, settings, seed, batch=200):
    """Images [n, 3, H, W] of n prompts sampled by a text-to-image teacher with the sampler settings, batch by
    batch from one generator seeded with seed; condition: a list of prompts -> their TextCondition."""
    gen, out = torch.Generator().manual_seed(seed), []
    for i in range(0, len(prompts), batch):
        tokens = sample(model, condition(prompts[i:i + batch]), generator=gen, **settings)
        out.append(tokens_to_images(model, vq, tokens))
    return torch.cat(out)


def render_features(tower, metas, seed):
    """FID's reference: a render of every metadata line, drawn with seed, in the toy image tower's features."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        return tower.features(render_batch([scene_for(m, rng) for m in metas]))


class T2I:
    """A text-to-image teacher loaded from a folder, with its preset's prompt settings, and a sampler of images."""

    def __init__(self, preset, folder, resolution=None):
        self.preset, self.folder = text_to_image_folder(preset, folder)
        self.p = get_preset(self.preset)
        self.resolution = resolution or self.p["prompt"]["resolution"]
        self.model, self.vq, self.tok, self.enc = load_meissonic(self.folder, self.resolution)
        self.micro = micro_conds(self.resolution, self.p["prompt"]["aesthetic"])

    def images(self, prompts, settings, seed, batch=200):
        def condition(chunk):
            return prompt_condition(self.tok, self.enc, chunk, self.p["prompt"]["negative_prompt"], self.micro,
                                    self.p["prompt"]["timestep"] == "counter")
        return sampled_images(self.model, self.vq, condition, prompts, settings, seed, batch)


def write_geneval_folder(out, metas, images, per_prompt):
    """GenEval's layout: out/<5-digit prompt index>/metadata.jsonl (its line), samples/<4-digit>.png, grid.png."""
    from PIL import Image
    pixels = to_uint8(images)
    for i, meta in enumerate(metas):
        folder = os.path.join(out, f"{i:05d}")
        os.makedirs(os.path.join(folder, "samples"), exist_ok=True)
        atomic_write(os.path.join(folder, "metadata.jsonl"), lambda f, m=meta: f.write((json.dumps(m) + "\n").encode()))
        for k in range(per_prompt):
            Image.fromarray(pixels[i * per_prompt + k]).save(os.path.join(folder, "samples", f"{k:04d}.png"))
        save_image_grid(images[i * per_prompt:(i + 1) * per_prompt], os.path.join(folder, "grid.png"), nrow=per_prompt)


def scoreable(metas):
    return all(g["class"] in SHAPES for m in metas for g in m.get("include", []) + m.get("exclude", []))


def teacher_table(t2i, metas, steps_list, settings, per_prompt, seed):
    """-> rows {steps, seconds, seen, held-out, all, fid}: GenEval-toy at each number of steps, FID against renders
    of the same prompts (drawn with seed + 1) in the toy image tower's feature space."""
    reps = [m for m in metas for _ in range(per_prompt)]
    prompts = [m["prompt"] for m in reps]
    tower = load_image_tower(t2i.folder)
    real = render_features(tower, reps, seed + 1)
    rows = []
    for steps in steps_list:
        t0 = time.time()
        images = t2i.images(prompts, dict(settings, steps=steps), seed)
        seconds = time.time() - t0
        table = summarise(reps, score_images(images, reps))
        with torch.no_grad():
            fid = frechet_distance(real, tower.features(images))
        rows.append(dict(steps=steps, seconds=round(seconds, 1), fid=round(fid, 3), **table))
    return rows


def token_report(t2i, renders, ids, prompts, seed, ratios=(0.1, 0.5, 0.9)):
    """What the VQ model's ids [B, h, w] of renders leave the teacher: the entropy (bits) of the ids of
    plain-background patches, the bits of an id given its patch's pixels (0: a patch has one code anywhere), and the
    teacher's masked cross-entropy (nats) on plain and on object patches with a
    share ``ratio`` of ids masked, given the prompt and (``_empty``) given the empty prompt: how much it reads the
    text."""
    gen = torch.Generator().manual_seed(seed)
    ids = ids.flatten(1)                                                                 # [B, h, w] -> [B, N]
    with torch.no_grad():
        plain = background_patches(renders, t2i.vq.factor).view_as(ids)                # [B, N]
        report = dict(plain_share=round(plain.float().mean().item(), 3),
                      plain_code_bits=round(entropy_bits(ids[plain]), 3),
                      code_bits_per_patch=round(code_bits_per_patch(ids.flatten(),
                                                                    patch_contents(renders, t2i.vq.factor)[1]), 3))
        cond = prompt_condition(t2i.tok, t2i.enc, prompts, t2i.p["prompt"]["negative_prompt"], t2i.micro, False)
        keep = torch.zeros(len(ids), dtype=torch.bool)
        for ratio in ratios:
            mask = torch.rand(ids.shape, generator=gen) < ratio                          # [B, N]
            x_t = torch.where(mask, t2i.model.mask_id, ids)[..., None]                   # [B, N] -> [B, N, 1]
            for drop, tail in ((keep, ""), (~keep, "_empty")):
                logits = t2i.model.logits(x_t, cond, drop)[:, :, 0].float()              # [B, N, K]
                ce = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")      # [B, N]
                report[f"ce_plain{tail}@{ratio}"] = round(ce[mask & plain].mean().item(), 3)
                report[f"ce_object{tail}@{ratio}"] = round(ce[mask & ~plain].mean().item(), 3)
    return report


def second_code_report(vq, renders, latents, ids, reps, seed, shares=(0.1, 0.25, 0.5, 1.0)):
    """Does a teacher's confusion among codes that decode alike make blobs?  GenEval-toy (seen prompts) of the renders
    decoded with a share of the object patches' ids replaced by the nearest code other than their own; far = the
    median ratio of that code's distance to their own's."""
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])                 # [B, C, h, w] -> [B h w, C]
    d = torch.cdist(flat, vq.quantize.embedding.weight)                               # [B h w, K]
    own = ids.reshape(-1, 1)                                                          # [B h w, 1]
    second = d.scatter(1, own, float("inf")).argmin(1)                                # the nearest other code
    far = (d.gather(1, second[:, None]) / d.gather(1, own).clamp_min(1e-8))[:, 0]
    second, objects = second.view_as(ids), ~background_patches(renders, vq.factor).view_as(ids)
    report = dict(object_share=round(objects.float().mean().item(), 3),
                  far=round(far[objects.flatten()].median().item(), 3))
    gen = torch.Generator().manual_seed(seed)
    for share in (0.0, *shares):
        new = torch.where(objects & (torch.rand(ids.shape, generator=gen) < share), second, ids)
        images = torch.cat([vq.decode(i).clamp(0, 1) for i in new.split(200)])
        report[f"seen_overall@{share}"] = round(summarise(reps, score_images(images, reps))["seen"]["overall"], 3)
    return report


def print_table(rows):
    for split in ("seen", "held-out"):
        tasks = [t for t in TASKS if t in rows[0].get(split, {})]
        if not tasks:
            continue
        print(f"\n{split} prompts\n| steps | overall | " + " | ".join(tasks) + (" | FID (all prompts) | seconds |"
                                                                            if split == "seen" else " |"))
        print("|---" * (len(tasks) + (4 if split == "seen" else 2)) + "|")
        for r in rows:
            cells = [f"{r[split]['overall']:.3f}"] + [f"{r[split][t]:.3f}" for t in tasks]
            extra = [f"{r['fid']:.3f}", f"{r['seconds']}"] if split == "seen" else []
            print(f"| {r['steps']} | " + " | ".join(cells + extra) + " |")


def main(argv=None):
    p = ArgumentParser(prog="geneval_toy.py", description="GenEval-toy: the detector, the teacher's table, "
                       "GenEval's folder layout")
    p.add_argument("command", choices=["detector", "tokenizer", "teacher", "sample", "metadata"])
    p.add_argument("--teacher", default="meissonic", help="a text-to-image preset (meissonic: the bundled toy world)")
    p.add_argument("--teacher-ckpt", help="a Meissonic-layout folder (default: the preset's bundled one)")
    p.add_argument("--steps-list", default="1,2,4,8,16,32,48", help="teacher: the numbers of steps of the table")
    p.add_argument("--per-prompt", type=int, default=4, help="samples per prompt (GenEval's: 4)")
    p.add_argument("--metadata", help="GenEval metadata .jsonl (default: GenEval-toy's prompts)")
    p.add_argument("--geneval-out", help="sample: write the samples in GenEval's folder layout here")
    p.add_argument("--out", help="teacher: the table as JSON; metadata: the .jsonl to write")
    p.add_argument("--grid", help="teacher: also a PNG with a row per task (its first 8 seen prompts, one sample "
                   "each, at --steps) and the prompts beside it as .json")
    p.add_argument("--repeats", type=int, default=20, help="detector: renders per prompt")
    p.add_argument("--seed", type=int, default=0)
    add_sampler_args(p)
    a = p.parse_args(argv)
    check_range("--per-prompt", a.per_prompt, low=1)
    if a.command == "metadata":
        out = a.out or "evaluation_metadata.jsonl"
        atomic_write(out, lambda f: f.write("".join(json.dumps(m) + "\n" for m in geneval_metadata()).encode()))
        print(f"wrote {out} ({len(geneval_metadata())} prompts)")
        return
    if a.command == "detector":
        table, misses = check_detector(check_range("--repeats", a.repeats, low=1), a.seed)
        folder = text_to_image_folder(a.teacher, a.teacher_ckpt, verbose=False)[1]
        noise = noise_floor(load_meissonic(folder, SIZE, verbose=False)[1], 4, a.seed)["all"]
        print("| task | renders | ground truth judged correct | with a deliberate error judged correct | random VQ "
              "ids judged correct (4 a prompt) |")
        print("|---|---|---|---|---|")
        for task, row in table.items():
            print(f"| {task} | {row['images']} | {row['truth_correct']:.4f} | {row['error_judged_correct']:.4f} | "
                  f"{noise[task]:.4f} |")
        print(f"random VQ ids ({folder}/vqvae) overall: {noise['overall']:.4f}")
        for prompt, reason in misses[:10]:
            print(f"missed: {prompt}: {reason}")
        return
    metas = read_metadata(a.metadata)
    if get_preset(a.teacher)["family"] != "meissonic":
        raise UserError(f"--teacher {a.teacher} is class-conditional; GenEval-toy needs a text-to-image preset "
                        f"(meissonic)")
    t2i = T2I(a.teacher, a.teacher_ckpt)
    settings = sampler_settings(a, t2i.p)
    if a.command in ("tokenizer", "teacher") and t2i.resolution != SIZE:
        raise UserError(f"{a.command} scores the toy world's {SIZE} px scenes, but preset {t2i.preset} samples at "
                        f"{t2i.resolution} px: for a toy-world folder pass --teacher meissonic-toy --teacher-ckpt DIR")
    if a.command == "tokenizer":                                         # the VQ model's ceiling on the table
        reps = [m for m in metas for _ in range(a.per_prompt)]
        rng = np.random.default_rng(a.seed)
        renders = render_batch([scene_for(m, rng) for m in reps])
        with torch.no_grad():
            latents, ids = (torch.cat(x) for x in zip(*[t2i.vq.encode(x) for x in renders.split(200)]))  # [B, h, w]
            recon = torch.cat([t2i.vq.decode(i).clamp(0, 1) for i in ids.split(200)])
            for name, images in (("renders", renders), ("VQ reconstructions", recon)):
                print(name, json.dumps(summarise(reps, score_images(images, reps))))
            print("tokens", json.dumps(token_report(t2i, renders, ids, [m["prompt"] for m in reps], a.seed)))
            print("second codes", json.dumps(second_code_report(t2i.vq, renders, latents, ids, reps, a.seed)))
        return
    if a.command == "sample":
        if not a.geneval_out:
            raise UserError("sample writes GenEval's folder layout: pass --geneval-out DIR")
        reps = [m for m in metas for _ in range(a.per_prompt)]
        images = t2i.images([m["prompt"] for m in reps], settings, a.seed)
        write_geneval_folder(a.geneval_out, metas, images, a.per_prompt)
        print(f"wrote {a.geneval_out}: {len(metas)} prompts x {a.per_prompt} samples at {settings['steps']} steps")
        if scoreable(metas):
            print(json.dumps(summarise(reps, score_images(images, reps))))
        return
    try:
        steps_list = [check_range("--steps-list", int(s), low=1) for s in a.steps_list.split(",")]
    except ValueError:
        raise UserError(f"--steps-list '{a.steps_list}' must be numbers of steps like 1,2,4,8") from None
    if not scoreable(metas):
        raise UserError("the table scores toy shapes only; --metadata holds other classes (use sample --geneval-out)")
    rows = teacher_table(t2i, metas, steps_list, settings, a.per_prompt, a.seed)
    print_table(rows)
    if a.grid:
        seen = {t: [r for r in metas if r["tag"] == t and r.get("split") != "held-out"] for t in TASKS}
        picks = [seen[t][k % len(seen[t])] for t in TASKS for k in range(8)]            # 8 a row, cycled
        save_image_grid(t2i.images([m["prompt"] for m in picks], settings, a.seed), a.grid, nrow=8)
        record = dict(rows=[[m["prompt"] for m in picks if m["tag"] == t] for t in TASKS], steps=settings["steps"])
        atomic_write(os.path.splitext(a.grid)[0] + ".json", lambda f: f.write(json.dumps(record, indent=1).encode()))
    if a.out:
        record = dict(teacher=t2i.preset, folder=t2i.folder, per_prompt=a.per_prompt, seed=a.seed, settings=settings,
                      rows=rows)
        atomic_write(a.out, lambda f: f.write(json.dumps(record, indent=1).encode()))


if __name__ == "__main__":
    from config import cli
    cli(main)
