"""GenEval's scoring rules, and a detector that needs no weights for the toy scenes: the scoring half of GenEval-toy
(geneval_toy.py samples the models and prints the tables; text_task.py scores a distillation with it).

GenEval (Ghosh et al. 2023) scores a text-to-image model by detecting the objects of each generated image
(Mask2Former), classifying each one's colour (CLIP on the masked crop), and checking the prompt's metadata:
``include`` groups need at least ``count`` detections of their class (their colour on the first ``count``; a
positioned group each of its objects in the relation to each object of the target group, by ``relative_position``),
``exclude`` groups fewer than ``count``.  An image is correct when every clause holds; a task's score is the mean over
its images, the overall score the mean of the six tasks.  All of that is followed here (``evaluate``), with the same
constants where they transfer (POSITION_THRESHOLD 0.1, detections sorted by confidence, a stricter confidence for
counting); the official evaluator's code is not used.

The detector (ours, not learned; ``detect``): the scenes are flat colours on a known plain background, and every
object is drawn at one radius (scenes.RADIUS), so

1. a pixel is an object's when it is nearer to one of the named colours than to the background (more than about
   half covered), and takes that colour's name (the colour check is then the component's own colour);
2. the pixels of one colour split into 4-connected components; components under ``MIN_AREA`` pixels are dropped;
3. each component's mask is compared with every shape drawn to fill the component's box (scenes.shape_mask at the
   shape's own extent), a shape only when its box at the world's radius is within ``SIZE_SLACK`` pixels of the
   component's on each side; the best shape is its class and that intersection over union its confidence, kept
   when above ``THRESHOLD`` (``COUNTING_THRESHOLD`` on counting prompts, as GenEval raises its threshold there).

Step 3's size rule and MIN_AREA are what keep noise from scoring: without them, uniformly random VQ ids decoded
read GenEval-toy 0.27-0.28 overall (small blobs fill their own boxes like squares), with them 0.01-0.05
(``noise_floor``, printed by ``python geneval_toy.py detector``).  GenEval's detector, trained on real objects, does
not find objects in noise either.

Failure modes (stated, and measured by ``python geneval_toy.py detector``): two touching objects of one colour merge
into one component (one detection or none, so counts come out low); a shape drawn smeared, broken or at another size
is missed (counted as absent rather than misclassified); a colour between two named ones (a reddish orange) takes
the nearer name; stray blobs become detections only if shape-like at the objects' size.

Shapes: B images, H x W pixels, C named colours.
"""
import json

import numpy as np
import torch

from scenes import (BACKGROUND, COLOURS, EXTENT, RADIUS, RELATIONS, SHAPES, SIZE, TASKS, geneval_metadata,
                    relative_position, render_batch, scene_for, shape_mask)

MIN_AREA = 60                  # pixels; the smallest object (a triangle) covers about 88
SIZE_SLACK = 3                 # pixels a component's box may differ from its shape's drawn box, per side
THRESHOLD = 0.5                # shape IoU to count as a detection (GenEval's detector confidence: 0.3)
COUNTING_THRESHOLD = 0.6       # on counting prompts (GenEval's: 0.9)
COLOUR_NAMES = tuple(COLOURS)


# ----------------------------------------------------------------------------------------------------------------
# The detector.
# ----------------------------------------------------------------------------------------------------------------
def colour_map(images):
    """images [B, 3, H, W] in [0, 1] -> colour index per pixel [B, H, W] (-1: background).  An edge pixel is a
    blend bg + a (c - bg) of the background and its object's colour c, so each pixel is projected on the segment
    from the background to every named colour: the colour of the nearest segment names it, and it is an object's
    pixel when its blend weight a there is above one half."""
    px = images.float().permute(0, 2, 3, 1)[..., None, :]                       # [B, H, W, 1, 3]
    bg = torch.tensor(BACKGROUND)
    direction = torch.tensor(list(COLOURS.values())) - bg                       # [C, 3]
    a = (((px - bg) * direction).sum(-1) / (direction ** 2).sum(-1)).clamp(0, 1)  # [B, H, W, C]
    residual = ((px - bg - a[..., None] * direction) ** 2).sum(-1)              # [B, H, W, C]
    nearest = residual.argmin(-1)                                               # [B, H, W]
    weight = a.gather(-1, nearest[..., None])[..., 0]
    return torch.where(weight > 0.5, nearest, torch.full_like(nearest, -1))


def components(colours):
    """4-connected components of equal colour: [B, H, W] colour ids -> component ids [B, H, W] (0: background),
    by propagating the largest pixel number through same-colour neighbours until nothing changes."""
    b, h, w = colours.shape
    ids = torch.arange(1, h * w + 1).reshape(1, h, w).expand(b, h, w).clone()
    ids[colours < 0] = 0
    while True:
        new = ids.clone()
        for dim, step in ((1, 1), (1, -1), (2, 1), (2, -1)):
            shifted, same = torch.roll(ids, step, dim), torch.roll(colours, step, dim) == colours
            edge = torch.zeros_like(same)                                       # no wrap-around at the border
            if dim == 1:
                edge[:, 0 if step == 1 else -1] = True
            else:
                edge[:, :, 0 if step == 1 else -1] = True
            new = torch.where(same & ~edge & (ids > 0), torch.maximum(new, shifted), new)
        if torch.equal(new, ids):
            return ids
        ids = new


def shape_scores(mask):
    """A component's mask cropped to its box [h, w] -> IoU with each shape drawn to fill that box; 0 for a shape
    whose drawn box (every object has radius RADIUS) differs from it by more than SIZE_SLACK pixels on a side."""
    h, w = mask.shape
    scores = {}
    for shape in SHAPES:
        left, top, right, bottom = EXTENT[shape]
        if abs(w - (left + right) * RADIUS) > SIZE_SLACK or abs(h - (top + bottom) * RADIUS) > SIZE_SLACK:
            scores[shape] = 0.0
            continue
        u = -left + (np.arange(w) + 0.5) / w * (left + right)
        v = -top + (np.arange(h) + 0.5) / h * (top + bottom)
        template = shape_mask(shape, *np.meshgrid(u, v))
        scores[shape] = (mask & template).sum() / max((mask | template).sum(), 1)
    return scores


def detect(images, threshold=THRESHOLD):
    """images [B, 3, H, W] -> per image {class: [(box (x0, y0, x1, y1), confidence, colour), ...]}, each list
    sorted by confidence, highest first (GenEval's order)."""
    colours = colour_map(images)
    ids = components(colours).numpy()
    colours = colours.numpy()
    out = []
    for i in range(len(ids)):
        found = {}
        for c in np.unique(ids[i]):
            if c == 0:
                continue
            ys, xs = np.nonzero(ids[i] == c)
            if len(ys) < MIN_AREA:
                continue
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            scores = shape_scores(ids[i, y0:y1, x0:x1] == c)
            shape = max(scores, key=scores.get)
            if scores[shape] > threshold:
                colour = COLOUR_NAMES[colours[i, ys[0], xs[0]]]
                found.setdefault(shape, []).append(((int(x0), int(y0), int(x1), int(y1)), float(scores[shape]), colour))
        out.append({k: sorted(v, key=lambda d: -d[1]) for k, v in found.items()})
    return out


# ----------------------------------------------------------------------------------------------------------------
# GenEval's rules.
# ----------------------------------------------------------------------------------------------------------------
def evaluate(found, meta):
    """One image's detections and its metadata -> (correct, reason), by GenEval's rules: include clauses ANDed
    (count, colour of the first ``count`` detections, position against the matched target group), exclude clauses
    ORed."""
    reasons, groups = [], []
    for req in meta.get("include", []):
        name, objs, ok = req["class"], found.get(req["class"], [])[:req["count"]], True
        if len(objs) < req["count"]:
            ok = False
            reasons.append(f"expected {name}>={req['count']}, found {len(objs)}")
        else:
            if "color" in req and sum(o[2] == req["color"] for o in objs) < req["count"]:
                ok = False
                reasons.append(f"expected {req['color']} {name}>={req['count']}, found "
                               f"{', '.join(o[2] for o in objs)}")
            if "position" in req and ok:
                rel, target = req["position"]
                if groups[target] is None:
                    ok = False
                    reasons.append(f"no target for {name} to be {rel}")
                else:
                    for o in objs:
                        bad = [t for t in groups[target] if rel not in relative_position(o[0], t[0])]
                        if bad:
                            ok = False
                            reasons.append(f"expected {name} {rel} target, found "
                                           f"{' and '.join(sorted(relative_position(o[0], bad[0][0])))} target")
                            break
        groups.append(objs if ok else None)
    for req in meta.get("exclude", []):
        if len(found.get(req["class"], [])) >= req["count"]:
            reasons.append(f"expected {req['class']}<{req['count']}, found {len(found[req['class']])}")
    return not reasons, "; ".join(reasons)


def score_images(images, metas):
    """images [B, 3, H, W] and a metadata dict per image -> a list of (correct, reason)."""
    results = [None] * len(metas)
    for counting in (False, True):                                       # the counting threshold where it applies
        idx = [i for i, m in enumerate(metas) if (m["tag"] == "counting") == counting]
        if idx:
            found = detect(images[idx], COUNTING_THRESHOLD if counting else THRESHOLD)
            for i, f in zip(idx, found):
                results[i] = evaluate(f, metas[i])
    return results


def summarise(metas, results):
    """-> {split: {task: accuracy, ..., 'overall': mean of the tasks present}} for 'seen', 'held-out' and 'all'."""
    table = {}
    for split in ("seen", "held-out", "all"):
        row = {}
        for task in TASKS:
            hits = [r[0] for m, r in zip(metas, results) if m["tag"] == task and split in ("all", m.get("split"))]
            if hits:
                row[task] = float(np.mean(hits))
        if row:
            row["overall"] = float(np.mean(list(row.values())))
            table[split] = row
    return table


# ----------------------------------------------------------------------------------------------------------------
# Checking the detector: ground-truth renders, and renders with one deliberate error.
# ----------------------------------------------------------------------------------------------------------------
def wrong_spec(meta, rng):
    """The metadata with one deliberate error, the scene then drawn from it: a wrong colour (colour tasks), a count
    one off (counting), the opposite relation (position), a missing object (two objects), another shape (single)."""
    spec = json.loads(json.dumps(meta))
    groups = spec["include"]
    if meta["tag"] in ("colors", "color_attr"):
        g = groups[int(rng.integers(len(groups)))]
        g["color"] = str(rng.choice([c for c in COLOURS if c != g["color"]]))
    elif meta["tag"] == "counting":
        groups[0]["count"] += 1 if groups[0]["count"] == 2 or rng.random() < 0.5 else -1
    elif meta["tag"] == "position":
        rel = groups[1]["position"][0]
        groups[1]["position"] = [RELATIONS[RELATIONS.index(rel) ^ 1], 0]        # left <-> right, above <-> below
    elif meta["tag"] == "two_object":
        del groups[int(rng.integers(2))]
    else:
        groups[0]["class"] = str(rng.choice([s for s in SHAPES if s != groups[0]["class"]]))
    return spec


def check_detector(repeats=20, seed=0):
    """Per task: the fraction of ground-truth renders judged correct, and of renders with one deliberate error
    judged correct (which must be near 0)."""
    rng = np.random.default_rng(seed)
    metas = [m for m in geneval_metadata() for _ in range(repeats)]
    truth = score_images(render_batch([scene_for(m, rng) for m in metas]), metas)
    wrong = score_images(render_batch([scene_for(wrong_spec(m, rng), rng) for m in metas]), metas)
    table = {}
    for task in TASKS:
        idx = [i for i, m in enumerate(metas) if m["tag"] == task]
        table[task] = dict(images=len(idx), truth_correct=float(np.mean([truth[i][0] for i in idx])),
                           error_judged_correct=float(np.mean([wrong[i][0] for i in idx])))
    return table, [(metas[i]["prompt"], truth[i][1]) for i in range(len(metas)) if not truth[i][0]]




def noise_floor(vq, repeats=4, seed=0):
    """What noise scores: every GenEval-toy prompt ``repeats`` times against images decoded by the VQ model from
    uniformly random ids -> summarise's table (near 0 when the detector does not read objects into noise)."""
    metas = [m for m in geneval_metadata() for _ in range(repeats)]
    side = SIZE // vq.factor
    ids = torch.randint(0, vq.codebook_size, (len(metas), side, side), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        images = vq.indices_to_images(ids).float().clamp(0, 1)
    return summarise(metas, score_images(images, metas))
