"""Data and metrics: toy data determinism, the image-folder loader, FID and PRDC on cases with known answers."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from config import UserError
from data import TOY_CLASSES, folder_images, load_images, save_image_grid, toy_images
from eval import frechet_distance, prdc


def test_toy_data_deterministic_and_balanced():
    a, la = toy_images(40, seed=5)
    b, lb = toy_images(40, seed=5)
    c, _ = toy_images(40, seed=6)
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert a.shape == (40, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(torch.bincount(la), torch.full((len(TOY_CLASSES),), 4))
    train, _, _ = load_images("toy", "train", 20)
    test, _, _ = load_images("toy", "test", 20)
    assert not torch.equal(train, test), "train and test splits come from different seeds"


def write_folder(root, sizes):
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for k, size in enumerate(sizes):
            Image.fromarray(np.full((size, size, 3), 40 * c + k, np.uint8)).save(root / name / f"{k:03d}.png")


def test_image_folder(tmp_path):
    write_folder(tmp_path, [8] * 12)
    images, labels, classes = folder_images(str(tmp_path), "train")
    assert classes == ["cat", "dog"] and images.shape == (20, 3, 8, 8) and labels.tolist() == [0] * 10 + [1] * 10
    test, test_labels, _ = folder_images(str(tmp_path), "test")                # every 10th file: 000 and 010
    assert len(test) == 4 and test[0, 0, 0, 0].item() == 0.0 and test[1, 0, 0, 0].item() == pytest.approx(10 / 255)


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        folder_images(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no class sub-folders"):
        folder_images(str(tmp_path))
    write_folder(tmp_path / "mixed", [8, 8, 16])
    with pytest.raises(UserError, match="mixed sizes"):
        folder_images(str(tmp_path / "mixed"))


def test_frechet_distance_known_values():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    b = torch.randn(20000, 4, generator=g, dtype=torch.float64) * 2 + 1
    # N(0, I) vs N(1, 4I) in 4-d: |mu|^2 + tr(I + 4I - 2*2I) = 4 + 4 = 8
    assert frechet_distance(a, b) == pytest.approx(8.0, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_uses_the_unbiased_covariance():
    """Small samples, where n and n - 1 differ.  Both sets have uncorrelated columns (sample covariance 0), so
    FID = sum over columns of (mu_a - mu_b)^2 + (sd_a - sd_b)^2 with the sample (n - 1) variances: 19.92; a
    population covariance (divided by n) gives 17.04."""
    a = torch.tensor([[0.0, 1.0], [1.0, -1.0], [2.0, -1.0], [3.0, 1.0]])           # variances 5/3 and 4/3
    b = torch.tensor([[1.0, 1.0], [5.0, -2.0], [9.0, 1.0]])                         # variances 16 and 3
    want = (1.5 - 5.0) ** 2 + (math.sqrt(5 / 3) - 4.0) ** 2 + (math.sqrt(4 / 3) - math.sqrt(3.0)) ** 2
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-9)


def test_prdc_identical_disjoint_and_collapsed():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(500, 8, generator=g)
    same = prdc(real, real.clone())
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = prdc(real, real + 100)
    assert far["precision"] == 0.0 and far["coverage"] == 0.0
    collapsed = prdc(real, real[:1].repeat(500, 1) + 1e-3 * torch.randn(500, 8, generator=g))
    assert collapsed["precision"] == 1.0 and collapsed["coverage"] < 0.05 and collapsed["recall"] < 0.05


def test_grid_png(tmp_path):
    save_image_grid(torch.rand(10, 3, 8, 8), str(tmp_path / "g.png"), nrow=4)
    im = Image.open(tmp_path / "g.png")
    assert im.size == (4 * 10 + 2, 3 * 10 + 2)


def test_the_gan_reads_the_train_split_and_fid_the_held_out_split_which_share_no_image(monkeypatch, tmp_path):
    """Soft-Di[M]O's real images (train.real_tokens) are the train split and FID's reference (eval.Evaluator) the
    test split, so the GAN never sees an evaluation image: toy splits come from different seeds (no image of the
    first 500 of either is in the other), a folder's test split is every 10th file of each class (no file in both)."""
    import eval as evaluation
    import train
    from maskbit import LFQBert
    from tokenizer import LFQTokenizer
    splits = []

    def recording(load):
        def load_images(data, split="train", n=None, seed=None):
            splits.append(split)
            return load(data, split, 8, seed)
        return load_images
    monkeypatch.setattr(train, "load_images", recording(load_images))
    monkeypatch.setattr(evaluation, "load_images", recording(load_images))
    monkeypatch.setattr(evaluation, "TOY_REFERENCE", {})                 # draw the reference, not an earlier one
    torch.manual_seed(0)
    teacher = LFQBert(img_size=32, input_stride=8, hidden_dim=16, codebook_size=2 ** 6, codebook_splits=2, depth=1,
                      heads=2, mlp_dim=16, dropout=0.0, nclass=10).eval()
    tokenizer = LFQTokenizer(dict(token_size=6, num_channels=3, hidden_channels=32, channel_mult=[1, 1, 1, 1],
                                  num_resolutions=4, num_res_blocks=1, sample_with_conv=True)).eval()
    tokens, _ = train.real_tokens(tokenizer, teacher, "toy", "", "cpu")
    evaluation.Evaluator("toy")
    assert splits == ["train", "test"] and tokens.shape == (8, 16, 2)
    train_images, _, _ = load_images("toy", "train", 500)
    test_images, _, _ = load_images("toy", "test", 500)
    seen = {image.numpy().tobytes() for image in train_images}
    assert not any(image.numpy().tobytes() in seen for image in test_images)
    write_folder(tmp_path, [8] * 12)
    values = lambda split: set(folder_images(str(tmp_path), split)[0][:, 0, 0, 0].tolist())  # one value per file
    assert len(values("train")) == 20 and len(values("test")) == 4 and not values("train") & values("test")


def test_the_toy_reference_is_drawn_once_per_feature_file(monkeypatch, tmp_path):
    """A second Evaluator of the same feature file reuses the held-out features; a feature file written again (another
    mtime) draws them anew."""
    import shutil
    import eval as evaluation
    calls = []
    monkeypatch.setattr(evaluation, "TOY_REFERENCE", {})
    monkeypatch.setattr(evaluation, "load_images", lambda *a, **k: calls.append(a) or load_images(*a, **k))
    first = evaluation.Evaluator("toy", n_ref=40)
    again = evaluation.Evaluator("toy", n_ref=40)
    assert len(calls) == 1 and again.ref_features is first.ref_features and again.info == first.info
    copy = str(tmp_path / "features.pt")
    shutil.copy(evaluation.FEATURES, copy)
    other = evaluation.Evaluator("toy", n_ref=40, features=copy)
    assert len(calls) == 2 and torch.equal(other.ref_features, first.ref_features)
