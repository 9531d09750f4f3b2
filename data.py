"""Images: the toy class-conditional dataset made in code, an ImageNet-style folder loader, and PNG grids.

Toy data ("shapes"): 10 classes of one coloured shape or pattern on a plain background, 32x32 RGB.  Every image
draws its own position, size, foreground and background colour (always with a clear contrast), so a generator
has to get the class right, draw a clean shape, and cover the variety.  The same seed gives the same images on
every machine (numpy's PCG64 stream); the 'train' and 'test' splits use disjoint seeds.

Image folders: ``root/<class name>/*.png|jpg|jpeg``, classes in sorted order, all images of one size (mixed
sizes are an error, not silently resized).  Every 10th image of each class (sorted by file name) is held out as
'test'.  ``data_key`` names a dataset for caches: a folder by its files' names, sizes and modification times.

Everything returns images as float tensors [B, 3, H, W] in [0, 1] (MaskBit's convention) and int64 labels [B].

Run ``python data.py`` to write ``toy_classes.png`` (one row per class).
"""
import os

import numpy as np
import torch

from config import UserError

TOY_CLASSES = ("circle", "square", "triangle", "ring", "plus", "diamond", "cross", "stripes", "checker", "dots")
TOY_SEEDS = {"train": 1000, "test": 2000}
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def _shape_mask(cls, x, y, r):
    """Coverage of one shape of class cls on coordinates x, y (relative to its centre, in pixels), radius r."""
    ax, ay = np.abs(x), np.abs(y)
    if cls == 0:                                                       # circle
        return x ** 2 + y ** 2 <= r ** 2
    if cls == 1:                                                       # square
        return (ax <= 0.8 * r) & (ay <= 0.8 * r)
    if cls == 2:                                                       # upward triangle
        return (y <= 0.8 * r) & (y >= -r + 2 * ax * 1.0) & (ax <= r)
    if cls == 3:                                                       # ring
        d = x ** 2 + y ** 2
        return (d <= r ** 2) & (d >= (0.55 * r) ** 2)
    if cls == 4:                                                       # plus
        return ((ax <= 0.28 * r) & (ay <= r)) | ((ay <= 0.28 * r) & (ax <= r))
    if cls == 5:                                                       # diamond
        return ax + ay <= r
    if cls == 6:                                                       # diagonal cross
        return ((np.abs(x - y) <= 0.4 * r) | (np.abs(x + y) <= 0.4 * r)) & (ax <= 0.75 * r) & (ay <= 0.75 * r)
    box = (ax <= 0.9 * r) & (ay <= 0.9 * r)
    period = max(3.0, r / 2.0)                                         # coarser than a 4x4-pixel token
    if cls == 7:                                                       # horizontal stripes in a square
        return box & (np.floor((y + r) / period) % 2 == 0)
    if cls == 8:                                                       # checkerboard in a square
        return box & ((np.floor((x + r) / period) + np.floor((y + r) / period)) % 2 == 0)
    d = 0.5 * r                                                        # four dots on a square's corners
    return ((ax - d) ** 2 + (ay - d) ** 2) <= (0.35 * r) ** 2


def _colour_pair(rng):
    """A saturated foreground and a background far enough from it (in luminance or hue) to be seen clearly."""
    while True:
        fg, bg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        fg = fg / max(fg.max(), 1e-3) * rng.uniform(0.7, 1.0)          # bright, saturated-ish foreground
        bg = bg * rng.uniform(0.15, 0.6)                               # darker, duller background
        if np.abs(fg - bg).max() > 0.45 and abs(fg.mean() - bg.mean()) > 0.2:
            return fg, bg


def toy_images(n, seed, size=32, supersample=4):
    """n toy images with balanced classes (cls = i % 10), deterministic in seed.
    -> (images float32 [n, 3, size, size] in [0, 1], labels int64 [n])."""
    rng = np.random.default_rng(seed)
    s = size * supersample
    grid = (np.arange(s) + 0.5) / supersample                          # pixel-centre coordinates in [0, size)
    gx, gy = np.meshgrid(grid, grid)
    images = np.empty((n, 3, size, size), dtype=np.float32)
    labels = np.arange(n) % len(TOY_CLASSES)
    for i in range(n):
        r = rng.uniform(0.22, 0.38) * size
        cx, cy = rng.uniform(r, size - r, 2) if r < size / 2 else (size / 2, size / 2)
        fg, bg = _colour_pair(rng)
        cover = _shape_mask(labels[i], gx - cx, gy - cy, r).astype(np.float32)  # [s, s]
        cover = cover.reshape(size, supersample, size, supersample).mean((1, 3))     # anti-aliased [size, size]
        images[i] = bg[:, None, None] * (1 - cover) + fg[:, None, None] * cover
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def image_files(root):
    """root/<class>/*.png|jpg -> (class names, [(class index, index within the class, path), ...]), both sorted."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    return classes, [(c, k, os.path.join(root, name, f)) for c, name in enumerate(classes)
                     for k, f in enumerate(sorted(f for f in os.listdir(os.path.join(root, name))
                                                  if f.lower().endswith(IMAGE_EXTS)))]


def data_key(data):
    """What identifies a dataset for a cache: 'toy' (made by code from fixed seeds), or a folder's image files with
    their sizes and modification times, so that an edited, added or removed image gives another key."""
    if data == "toy" or not os.path.isdir(data):                        # a missing folder fails in load_images
        return data
    stats = [(path, os.stat(path)) for _, _, path in image_files(data)[1]]
    return "\n".join([os.path.abspath(data)] + [f"{path} {st.st_size} {st.st_mtime_ns}" for path, st in stats])


def folder_images(root, split="train"):
    """root/<class>/*.png|jpg -> (images [n, 3, H, W] in [0, 1], labels [n], class names)."""
    from PIL import Image
    if not os.path.isdir(root):
        raise UserError(f"data folder '{root}' does not exist or is not a folder (expected root/<class>/*.png)")
    classes, files = image_files(root)
    if not classes:
        raise UserError(f"data folder '{root}' has no class sub-folders (expected root/<class>/*.png)")
    images, labels, first = [], [], None
    for c, k, path in files:
        try:
            with Image.open(path) as im:                               # every file's size is checked, all splits
                size = im.size
                if first is None:
                    first = (path, size)
                elif size != first[1]:
                    raise UserError(f"images of mixed sizes: '{path}' is {size[0]}x{size[1]} but "
                                    f"'{first[0]}' is {first[1][0]}x{first[1][1]}; resize them all to one size")
                if (k % 10 == 0) == (split == "test"):
                    images.append(np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0)
                    labels.append(c)
        except OSError as e:
            raise UserError(f"image '{path}' cannot be read ({e})") from None
    if not images:
        raise UserError(f"data folder '{root}' has no {split} images (*.png, *.jpg) in its class folders")
    return torch.from_numpy(np.stack(images)), torch.tensor(labels), classes


def load_images(data, split="train", n=None, seed=None):
    """data: 'toy' or a folder path.  -> (images [n, 3, H, W] in [0, 1], labels [n], number of classes)."""
    if data == "toy":
        count = n if n is not None else (20000 if split == "train" else 5000)
        images, labels = toy_images(count, TOY_SEEDS[split] + (seed or 0))
        return images, labels, len(TOY_CLASSES)
    images, labels, classes = folder_images(data, split)
    if n is not None:
        images, labels = images[:n], labels[:n]
    return images, labels, len(classes)


def to_uint8(images):
    """[B, 3, H, W] floats in [0, 1] -> numpy uint8 [B, H, W, 3] (clipped, rounded)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_image_grid(images, path, nrow=8):
    """images [B, 3, H, W] in [0, 1] -> one PNG grid with 2-pixel white gaps, written atomically."""
    from PIL import Image
    b, _, h, w = images.shape
    ncol = min(nrow, b)
    rows = (b + ncol - 1) // ncol
    grid = np.full((rows * (h + 2) + 2, ncol * (w + 2) + 2, 3), 255, dtype=np.uint8)
    for i, img in enumerate(to_uint8(images)):
        r, c = divmod(i, ncol)
        grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = img
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    Image.fromarray(grid).save(tmp, format="PNG")
    os.replace(tmp, path)


if __name__ == "__main__":
    images, labels = toy_images(80, seed=0)
    order = torch.argsort(labels * 100 + torch.arange(80) // 10, stable=True)
    save_image_grid(images[order], "toy_classes.png", nrow=8)
    print("wrote toy_classes.png: rows of", ", ".join(TOY_CLASSES))
