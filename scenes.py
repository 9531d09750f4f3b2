"""The toy text-to-image world: scenes made in code, their captions, and GenEval's prompts, with known answers.

Every text-to-image evaluator the papers use needs hub weights and a GPU (GenEval runs a Mask2Former detector and a
CLIP colour classifier).  Here the right answer to every prompt is known because the images are drawn by code:

* a **scene** is one to four shapes (``SHAPES``) in named colours (``COLOURS``: six of GenEval's ten, the ones that
  stay apart after a 4x4-pixel VQ token; no black, white, pink or brown) on a plain dark background, 48 x 48 pixels,
  anti-aliased, objects never touching; every object has radius 7 and its centre on a corner of the VQ model's
  4 x 4-pixel tokens, so it is the same ids wherever it stands, and no token shows two objects (``LATTICE``,
  ``FOOTPRINT``; docs/text_to_image.md measures why: free radii and positions left the teacher blobs);
* a **spec** says what a scene must hold, in GenEval's own metadata format (``include``: groups of {class, count,
  color?, position?}; ``exclude``): ``scene_for(spec)`` draws a scene that satisfies it, ``caption(spec)`` words it
  with some free variety, ``geneval_prompt(spec)`` words it exactly as GenEval's ``create_prompts.py`` does;
* **held-out compositions**: the colour-shape pairs of ``HELD_OUT_COLOURED`` and the exact counts of
  ``HELD_OUT_COUNTS`` never occur in a training scene, in its image or its caption (``training_spec`` rejects
  them); GenEval-toy's held-out prompts are made of them, to measure compositional generalisation.

Positions use GenEval's rule (``relative_position``, POSITION_THRESHOLD 0.1 of the two boxes' sizes), the one
implementation for both the captions here and the scoring in geneval_toy.py; a scene placed for "A left of B" has
"left of" and nothing else under that rule, with a margin (the offset's direction within about 40 degrees of the
axis), so that a detector's box off by a pixel reads the same relation.

Shapes: B images, H = W = ``SIZE`` pixels.  Boxes are (x0, y0, x1, y1) in pixels, x1 and y1 exclusive.

Run: ``python scenes.py`` writes ``toy_scenes.png`` (a row per GenEval task) and prints the captions.
"""
import math

import numpy as np
import torch

SIZE = 48
SUPERSAMPLE = 4
BACKGROUND = (0.12, 0.12, 0.12)
SHAPES = ("circle", "square", "triangle", "plus")
COLOURS = {"red": (0.92, 0.12, 0.10), "orange": (1.0, 0.55, 0.05), "yellow": (0.95, 0.90, 0.15),
           "green": (0.10, 0.72, 0.22), "blue": (0.18, 0.38, 1.0), "purple": (0.62, 0.18, 0.86)}
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = ("zero", "one", "two", "three", "four")
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
HELD_OUT_COLOURED = (("purple", "triangle"), ("green", "circle"), ("orange", "square"), ("blue", "plus"))
HELD_OUT_COUNTS = (("circle", 4), ("triangle", 3))
RADIUS = 7.0                             # every object's radius in pixels: 14-pixel objects
LATTICE = 4                              # centres on the VQ model's 4 x 4-pixel token corners (see scene_for)
FOOTPRINT = 16                           # centres at least this far apart on one axis: no token holds two objects
POSITION_THRESHOLD = 0.1                 # GenEval's
AXIS_ANGLE = {"left of": math.pi, "right of": 0.0, "above": -math.pi / 2, "below": math.pi / 2}  # y grows down
# each shape's extent in units of its radius: (left, top, right, bottom), so a box is known without rendering
EXTENT = {"circle": (1, 1, 1, 1), "square": (0.85, 0.85, 0.85, 0.85), "triangle": (1, 1, 1, 0.8),
          "plus": (1, 1, 1, 1)}


# ----------------------------------------------------------------------------------------------------------------
# Drawing.
# ----------------------------------------------------------------------------------------------------------------
def shape_mask(shape, u, v):
    """Inside-test of a shape at normalised coordinates u = (x - cx) / r, v = (y - cy) / r (y down)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u ** 2 + v ** 2 <= 1
    if shape == "square":
        return (au <= 0.85) & (av <= 0.85)
    if shape == "triangle":                                             # apex up at v = -1, base at v = 0.8
        return (v <= 0.8) & (v >= -1 + 1.8 * au)
    if shape == "plus":
        return ((au <= 0.3) & (av <= 1)) | ((av <= 0.3) & (au <= 1))
    raise ValueError(f"unknown shape '{shape}'; the toy world has {', '.join(SHAPES)}")


def box_of(obj):
    """An object (shape, colour, cx, cy, r) -> its box (x0, y0, x1, y1) from the shape's extent."""
    shape, _, cx, cy, r = obj
    left, top, right, bottom = EXTENT[shape]
    return cx - left * r, cy - top * r, cx + right * r, cy + bottom * r


def render(scene, size=SIZE):
    """A scene (a list of objects (shape, colour, cx, cy, r)) -> image float32 [3, size, size] in [0, 1]: each
    object's coverage of a pixel averaged over SUPERSAMPLE^2 sub-pixels (anti-aliasing)."""
    image = np.empty((3, size, size), np.float32)
    image[:] = np.array(BACKGROUND, np.float32)[:, None, None]
    s = SUPERSAMPLE
    for shape, colour, cx, cy, r in scene:
        x0, y0 = max(int(cx - r) - 1, 0), max(int(cy - r) - 1, 0)
        x1, y1 = min(int(cx + r) + 2, size), min(int(cy + r) + 2, size)
        xs = x0 + (np.arange((x1 - x0) * s) + 0.5) / s                   # sub-pixel centres of the window
        ys = y0 + (np.arange((y1 - y0) * s) + 0.5) / s
        u, v = np.meshgrid((xs - cx) / r, (ys - cy) / r)
        cover = shape_mask(shape, u, v).astype(np.float32)
        cover = cover.reshape(y1 - y0, s, x1 - x0, s).mean((1, 3))      # [h s, w s] -> [h, w]
        rgb = np.array(COLOURS[colour], np.float32)[:, None, None]
        window = image[:, y0:y1, x0:x1]
        image[:, y0:y1, x0:x1] = window * (1 - cover) + rgb * cover
    return image


def render_batch(scenes):
    """A list of scenes -> images float32 [B, 3, SIZE, SIZE] in [0, 1]."""
    return torch.from_numpy(np.stack([render(s) for s in scenes]))


# ----------------------------------------------------------------------------------------------------------------
# GenEval's position rule, the one implementation (captions here, scoring in geneval_toy.py).
# ----------------------------------------------------------------------------------------------------------------
def relative_position(box_a, box_b, threshold=POSITION_THRESHOLD, cut=0.5):
    """The relations of box A to box B under GenEval's rule: the centre offset, shrunk per axis by threshold x
    (A's size + B's size), normalised by the offset's length; 'left of' if its x < -cut, and so on."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = box_a, box_b
    offset = ((ax0 + ax1 - bx0 - bx1) / 2, (ay0 + ay1 - by0 - by1) / 2)
    dims = (abs(ax1 - ax0) + abs(bx1 - bx0), abs(ay1 - ay0) + abs(by1 - by0))
    revised = [math.copysign(max(abs(o) - threshold * d, 0), o) for o, d in zip(offset, dims)]
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    dx, dy = (r / math.hypot(*offset) for r in revised)
    return {name for name, holds in (("left of", dx < -cut), ("right of", dx > cut), ("above", dy < -cut),
                                     ("below", dy > cut)) if holds}


def clearly(rel, box_a, box_b):
    """rel holds and nothing else, with a margin (cut 0.75 for rel, 0.35 for the rest), so that boxes a pixel off
    still read rel alone."""
    return relative_position(box_a, box_b, cut=0.75) == {rel} and relative_position(box_a, box_b, cut=0.35) == {rel}


# ----------------------------------------------------------------------------------------------------------------
# Specs -> scenes.
# ----------------------------------------------------------------------------------------------------------------
def allowed_colours(shape, train):
    return [c for c in COLOURS if not (train and (c, shape) in HELD_OUT_COLOURED)]


def scene_for(spec, rng, train=False, tries=500):
    """A scene that satisfies spec['include'] (groups in GenEval's format) and nothing more: each group's count of
    its class, in its colour (else a random one, never a held-out pair when ``train``), a positioned group's every
    object in its relation to every object of the target group.  -> list of (shape, colour, cx, cy, r)."""
    for _ in range(tries):
        scene, groups, ok = [], [], True
        for g in spec["include"]:
            members = []
            for _ in range(g["count"]):
                colour = g.get("color") or str(rng.choice(allowed_colours(g["class"], train)))
                for _ in range(50):
                    r = RADIUS
                    cx, cy = rng.uniform(r + 1, SIZE - r - 1, 2)
                    if "position" in g:                                  # near the axis of the relation
                        rel, target = g["position"]
                        t = groups[target][int(rng.integers(len(groups[target])))]
                        angle = AXIS_ANGLE[rel] + rng.uniform(-0.6, 0.6)
                        distance = rng.uniform(FOOTPRINT, SIZE / 1.5)
                        cx, cy = t[2] + distance * math.cos(angle), t[3] + distance * math.sin(angle)
                    cx, cy = (LATTICE * round(c / LATTICE) for c in (cx, cy))  # an object is the same ids anywhere
                    if not (r + 1 <= cx <= SIZE - r - 1 and r + 1 <= cy <= SIZE - r - 1):
                        continue
                    obj = (g["class"], colour, float(cx), float(cy), float(r))
                    if any(max(abs(cx - o[2]), abs(cy - o[3])) < FOOTPRINT for o in scene):
                        continue
                    if "position" in g:
                        if not all(clearly(rel, box_of(obj), box_of(t)) for t in groups[target]):
                            continue
                    break
                else:
                    ok = False
                    break
                scene.append(obj)
                members.append(obj)
            if not ok:
                break
            groups.append(members)
        if ok:
            return scene
    raise ValueError(f"no scene found for {spec}")


# ----------------------------------------------------------------------------------------------------------------
# Specs -> words.
# ----------------------------------------------------------------------------------------------------------------
def with_article(words):
    return ("an " if words[0] in "aeiou" else "a ") + words


def plural(shape):
    return shape + "es" if shape.endswith("s") else shape + "s"


def noun_phrase(group, rng=None):
    """One group in words: 'a red circle', 'an orange square', 'two blue triangles' (rng: 'one' for 'a' at times)."""
    name = " ".join(([group["color"]] if group.get("color") else []) + [
        group["class"] if group["count"] == 1 else plural(group["class"])])
    if group["count"] > 1:
        return f"{NUMBERS[group['count']]} {name}"
    return f"one {name}" if rng is not None and rng.random() < 0.15 else with_article(name)


def geneval_prompt(spec):
    """The prompt in GenEval's wording ('a photo of ...'; a position spec names the positioned group first)."""
    groups = spec["include"]
    if len(groups) == 2 and "position" in groups[1]:
        return f"a photo of {noun_phrase(groups[1])} {groups[1]['position'][0]} {noun_phrase(groups[0])}"
    return "a photo of " + " and ".join(noun_phrase(g) for g in groups)


RELATION_WORDS = {"left of": ("left of", "to the left of", "on the left of"),
                  "right of": ("right of", "to the right of", "on the right of"),
                  "above": ("above", "over"), "below": ("below", "under")}
PREFIXES = ("a photo of ", "", "an image of ", "a picture of ", "there is ")


def caption(spec, rng):
    """A training caption of the spec with free variety: prefix, 'a' / 'one', relation synonyms, group order."""
    groups = spec["include"]
    if len(groups) == 2 and "position" in groups[1]:
        rel = str(rng.choice(RELATION_WORDS[groups[1]["position"][0]]))
        body = f"{noun_phrase(groups[1], rng)} {rel} {noun_phrase(groups[0], rng)}"
    else:
        body = " and ".join(noun_phrase(groups[i], rng) for i in rng.permutation(len(groups)))
    prefix = str(rng.choice(PREFIXES))
    if prefix == "there is " and body.split()[0] in NUMBERS[2:]:
        prefix = "there are "
    return prefix + body


# ----------------------------------------------------------------------------------------------------------------
# Specs: the training distribution and GenEval-toy's prompts.
# ----------------------------------------------------------------------------------------------------------------
def is_held_out(spec):
    """Whether a spec contains a held-out colour-shape pair or a held-out exact count."""
    return any((g.get("color"), g["class"]) in HELD_OUT_COLOURED or (g["class"], g["count"]) in HELD_OUT_COUNTS
               for g in spec["include"])


def scene_counts(scene):
    counts = {}
    for obj in scene:
        counts[obj[0]] = counts.get(obj[0], 0) + 1
    return counts


def training_spec(rng):
    """One random spec of the training mixture: GenEval's six kinds of scene, plus counted groups in a relation
    ('two red circles left of a blue square'); colours named half of the time; never a held-out composition."""
    while True:
        kind = rng.choice(["single", "two", "count", "position", "count_position"], p=[0.2, 0.25, 0.2, 0.2, 0.15])
        a, b = (str(s) for s in rng.choice(SHAPES, 2, replace=kind in ("count_position",)))
        ga, gb = ({"class": s, "count": 1} for s in (a, b))
        for g in (ga, gb):
            if rng.random() < 0.5:
                g["color"] = str(rng.choice(allowed_colours(g["class"], True)))
        if kind == "single":
            spec = dict(include=[ga])
        elif kind == "two":
            spec = dict(include=[ga, gb])
        elif kind == "count":
            spec = dict(include=[dict(ga, count=int(rng.integers(2, 5)))])
        else:
            count = 1 if kind == "position" else 2                  # three in a row do not fit beside one
            spec = dict(include=[gb, dict(ga, count=count, position=(str(rng.choice(RELATIONS)), 0))])
        if not is_held_out(spec):
            return spec


def training_batch(n, seed):
    """n training scenes, deterministic in seed -> (images [n, 3, H, W], captions, specs).  A scene whose random
    colours or counts would make a held-out composition is drawn again."""
    rng = np.random.default_rng(seed)
    scenes, captions, specs = [], [], []
    while len(scenes) < n:
        spec = training_spec(rng)
        scene = scene_for(spec, rng, train=True)
        if any(scene_counts(scene).get(s) == k for s, k in HELD_OUT_COUNTS):
            continue
        scenes.append(scene)
        captions.append(caption(spec, rng))
        specs.append(spec)
    return render_batch(scenes), captions, specs


def training_captions(n, seed):
    """n training captions, deterministic in seed, without their scenes: the prompts of a data-free distillation."""
    rng = np.random.default_rng(seed)
    return [caption(training_spec(rng), rng) for _ in range(n)]


def geneval_metadata():
    """GenEval-toy's prompts, a dict per line of GenEval's evaluation_metadata.jsonl (tag, include, exclude, prompt)
    plus 'split': 'seen' or 'held-out' (a held-out colour-shape pair or count in it)."""
    rows = []
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    for s in SHAPES:
        rows.append(dict(tag="single_object", include=[{"class": s, "count": 1}]))
    for a, b in pairs:
        rows.append(dict(tag="two_object", include=[{"class": a, "count": 1}, {"class": b, "count": 1}]))
    for s in SHAPES:
        for k in (2, 3, 4):
            rows.append(dict(tag="counting", include=[{"class": s, "count": k}], exclude=[{"class": s, "count": k + 1}]))
    for s in SHAPES:
        for c in COLOURS:
            rows.append(dict(tag="colors", include=[{"class": s, "count": 1, "color": c}]))
    for a, b in pairs:
        for rel in RELATIONS:
            rows.append(dict(tag="position", include=[{"class": b, "count": 1},
                                                      {"class": a, "count": 1, "position": [rel, 0]}]))
    colours = list(COLOURS)
    for i, (a, b) in enumerate(pairs):                                  # each ordered pair, colour pairs in turn
        for j in range(4):
            ca, cb = colours[(i + j) % 6], colours[(i + 2 * j + 1) % 6]   # never equal
            rows.append(dict(tag="color_attr", include=[{"class": a, "count": 1, "color": ca},
                                                        {"class": b, "count": 1, "color": cb}]))
    for row in rows:
        row["prompt"] = geneval_prompt(row)
        row["split"] = "held-out" if is_held_out(row) else "seen"
    return rows


if __name__ == "__main__":
    from data import save_image_grid
    meta = geneval_metadata()
    rng = np.random.default_rng(0)
    picks = [m for t in TASKS for m in [r for r in meta if r["tag"] == t][:8]]
    save_image_grid(render_batch([scene_for(m, rng) for m in picks]), "toy_scenes.png", nrow=8)
    _, captions, _ = training_batch(8, seed=0)
    print("wrote toy_scenes.png (a row per task: " + ", ".join(TASKS) + ")")
    print(f"{len(meta)} GenEval-toy prompts, {sum(m['split'] == 'held-out' for m in meta)} held out; captions:")
    print("\n".join(captions))
