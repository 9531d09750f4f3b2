"""The toy world: a few training steps lower the loss; the shipped checkpoints load strictly and sample."""
import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch

from checkpoints import load_model
from config import PRESETS, UserError
from data import toy_images
from maskbit import LFQBert
from teacher import build_teacher
from tokenizer import LFQTokenizer, build_tokenizer
from optim import optimise
from train import decay_groups, masked_ce, train_teacher, train_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TOKENIZER = dict(token_size=8, num_channels=3, hidden_channels=32, channel_mult=[1, 2], num_resolutions=2,
                      num_res_blocks=1, commitment_cost=0.25, entropy_loss_weight=0.02,
                      entropy_loss_temperature=0.01, entropy_gamma=1.0)


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("autocast", [contextlib.nullcontext, bf16_autocast], ids=["fp32", "amp"])
def test_tokenizer_steps_lower_the_loss(autocast):
    """Also under bf16 autocast (train.py --amp), where the LFQ terms still see float32 latents."""
    torch.manual_seed(0)
    images, _ = toy_images(128, seed=0, size=16)
    model, lfq_dtypes = LFQTokenizer(TINY_TOKENIZER), []
    lfq_losses = model.lfq_losses
    model.lfq_losses = lambda z, *args: lfq_dtypes.append(z.dtype) or lfq_losses(z, *args)
    losses = train_tokenizer(model, images, 40, 16, 2e-3, 5, 128, torch.Generator().manual_seed(0), progress=False,
                             autocast=autocast)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    assert set(lfq_dtypes) == {torch.float32}


@pytest.mark.parametrize("autocast", [contextlib.nullcontext, bf16_autocast], ids=["fp32", "amp"])
def test_teacher_steps_lower_the_loss(autocast):
    torch.manual_seed(0)
    model = LFQBert(img_size=16, hidden_dim=32, codebook_size=64, codebook_splits=2, depth=1, heads=2, mlp_dim=64,
                    dropout=0.0, nclass=2, input_stride=4)
    labels = torch.arange(256) % 2
    tokens = torch.where(labels[:, None, None] == 0, torch.tensor([1, 2]), torch.tensor([5, 6])).expand(256, 16, 2)
    ema, losses = train_teacher(model, tokens.clone(), labels, 60, 32, 3e-3, 5, gen=torch.Generator().manual_seed(0),
                                progress=False, autocast=autocast)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    assert not all(torch.equal(a, b) for a, b in zip(ema.parameters(), model.parameters()))


def test_toy_teacher_recipe_choices():
    """Our two documented departures from MaskBit's recipe: the loss ignores unmasked entries, and embeddings and
    1-D parameters get no weight decay."""
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 6, 2, 8), torch.randint(0, 8, (2, 6, 2))
    mask = torch.rand(2, 6, 2) < 0.5
    other = torch.where(mask[..., None], logits, torch.randn_like(logits))  # unmasked entries changed
    assert torch.equal(masked_ce(logits, targets, mask), masked_ce(other, targets, mask))
    torch.testing.assert_close(masked_ce(logits, targets, mask, 0.0),
                               torch.nn.functional.cross_entropy(logits[mask], targets[mask]))
    model = LFQBert(img_size=16, hidden_dim=32, codebook_size=64, codebook_splits=2, depth=1, heads=2, mlp_dim=64,
                    nclass=2, input_stride=4)
    decay, no_decay = decay_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} >= {"pos_emb", "class_emb.weight", "input_proj.bias"}
    assert "input_proj.weight" in {names[id(p)] for p in decay["params"]} and decay["weight_decay"] == 0.045
    assert all(p.dim() >= 2 for p in decay["params"]) and no_decay["weight_decay"] == 0.0


def test_shipped_pair_loads_strictly():
    p = PRESETS["maskbit-toy"]
    teacher, ckpt = load_model("teacher", "maskbit-toy", p["bundled"]["teacher"], build_teacher)
    tokenizer, _ = load_model("tokenizer", "maskbit-toy", p["bundled"]["tokenizer"], build_tokenizer)
    assert set(ckpt["model"]) == set(teacher.state_dict()) and ckpt["preset"] == "maskbit-toy"
    assert teacher.seq_len == tokenizer.images_to_indices(torch.zeros(1, 3, 32, 32)).shape[1]


def test_sample_cli_out_of_the_box(tmp_path):
    out = tmp_path / "grid.png"
    run = subprocess.run([sys.executable, "teacher.py", "sample", "--teacher", "maskbit-toy", "--n", "8",
                          "--steps", "4", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    record = json.load(open(tmp_path / "grid.json"))
    assert out.exists() and record["steps"] == 4 and record["n"] == 8 and "guidance" in record


def test_non_finite_training_loss_stops_with_step():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters())
    before = model.weight.detach().clone()
    with pytest.raises(UserError, match="step 7: teacher loss is not finite"):
        optimise(opt, model, model(torch.ones(1, 2)).sum() * float("nan"), "teacher", 7)
    assert torch.equal(model.weight, before), "no step is taken on a non-finite loss"
