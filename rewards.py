"""Rewards on images: the interface Soft-Di[M]O's reward fine-tuning and test-time search share, and a toy reward.

A reward is any differentiable callable ``reward(images, labels) -> [B]``: images [B, 3, H, W] in [0, 1] (MaskBit's
convention; soft-decoded images can leave that range, so the built-in reward clamps them first), labels [B] the
class (or, for text-to-image, whatever conditions the generator).  Higher is better.  On the command line rewards
are named with weights, the lambda_i of L_reward = -sum_i lambda_i R_i(Dec(Emb_Dec(z)), c) (Soft-Di[M]O Sec. 2.5):

    --reward classifier                 the built-in toy reward below, lambda = 1
    --reward classifier:2,my_rewards:hps:0.5
                                        several, summed with their weights
    --reward runs/r.pt                  a reward classifier trained by: python tteo.py train-reward --out runs/r.pt
    --reward module:function[:WEIGHT]   a user's own callable, imported from module (e.g. my_rewards.py beside
                                        distill.py); it receives images and labels on the generator's device

The paper's rewards (CLIP score, ImageReward; HPS and PickScore for selection) need weights from a hub, so nothing
here downloads them; docs/soft_dimo.md shows how one is wrapped as such a callable.

The built-in toy reward is log p(requested class | image) under a small **reward classifier**, the toy stand-in
for a CLIP score.  It is deliberately not eval.py's feature network: a generator optimised against the very model
that scores it proves nothing.  Another architecture (max-pooled ReLU convolutions, an MLP head on mean+max
pooled features, instead of strided GroupNorm/SiLU convolutions and a linear head), another augmentation and
another seed; ``assets/reward_classifier.pt`` is trained by ``python tteo.py train-reward --data toy``.

Shapes: B batch, C classes.  Run ``python rewards.py`` to score toy test images with the shipped classifier.
"""
import importlib
import os
import sys

import torch
import torch.nn as nn

from checkpoints import FORMAT, load_checkpoint, save_checkpoint
from config import ASSETS, ArgumentParser, UserError, check_range
from data import load_images
from eval import train_classifier

REWARD_CLASSIFIER = os.path.join(ASSETS, "reward_classifier.pt")


# ----------------------------------------------------------------------------------------------------------------
# The toy reward: a classifier unlike the evaluation network.
# ----------------------------------------------------------------------------------------------------------------
class RewardClassifier(nn.Module):
    """Three ReLU convolutions with max pooling, mean+max global pooling, a two-layer MLP head -> logits [B, C]."""

    def __init__(self, nclass=10, width=24):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(8 * width, 4 * width), nn.ReLU(), nn.Linear(4 * width, nclass))
        self.nclass, self.width = nclass, width

    def forward(self, images):
        h = self.body(images - 0.5)                                      # [B, 4W, H/4, W/4]
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))  # [B, 8W] -> [B, C]


def jitter(x, gen):
    """Training augmentation: a shift of up to 2 pixels, contrast jitter, pixel noise."""
    dx, dy = (torch.randint(-2, 3, (2,), generator=gen)).tolist()
    x = torch.roll(x, (dy, dx), (2, 3))
    x = 0.5 + (x - 0.5) * (0.8 + 0.4 * torch.rand(x.shape[0], 1, 1, 1, generator=gen))
    return (x + 0.03 * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def load_reward_classifier(path=REWARD_CLASSIFIER):
    ckpt = load_checkpoint(path, "reward classifier")
    if not (isinstance(ckpt, dict) and ckpt.get("kind") == "reward"):
        raise UserError(f"'{path}' is not a reward-classifier checkpoint (make one with: python tteo.py "
                        f"train-reward --out {path})")
    net = RewardClassifier(**ckpt["config"])
    net.load_state_dict(ckpt["model"], strict=True)
    return net.eval().requires_grad_(False)


class ClassifierReward:
    """R(x, c) = log p_reward(c | clamp(x, 0, 1)): the reward classifier's log-probability of the requested class."""

    def __init__(self, path=REWARD_CLASSIFIER):
        self.net, self.path = load_reward_classifier(path), path

    def __call__(self, images, labels):
        net = self.net.to(images.device)
        logits = net(images.float().clamp(0, 1))                          # [B, C]
        return torch.log_softmax(logits, -1).gather(1, labels[:, None].long())[:, 0]


# ----------------------------------------------------------------------------------------------------------------
# --reward NAME[:WEIGHT],...
# ----------------------------------------------------------------------------------------------------------------
def user_reward(module_name, function_name):
    """Import module_name (from the working directory or sys.path) and return its callable function_name."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"--reward {module_name}:{function_name}: cannot import module '{module_name}' ({e})") \
            from None
    fn = getattr(module, function_name, None)
    if fn is None:
        raise UserError(f"--reward {module_name}:{function_name}: module '{module_name}' has no "
                        f"'{function_name}'")
    if not callable(fn):
        raise UserError(f"--reward {module_name}:{function_name}: '{function_name}' is a "
                        f"{type(fn).__name__}, not a callable reward(images, labels) -> [B]")
    return fn


def parse_rewards(spec):
    """'classifier:2,mod:fn' -> [(name, weight, callable), ...] (weights are the paper's lambda_i)."""
    if not spec or not str(spec).strip():
        raise UserError("--reward is empty; name one, e.g. --reward classifier")
    rewards = []
    for item in str(spec).split(","):
        parts = item.strip().split(":")
        weight = 1.0
        if len(parts) > 1:
            try:
                weight = float(parts[-1])
                parts = parts[:-1]
            except ValueError:
                pass
        if not all(parts) or len(parts) > 2:
            raise UserError(f"--reward '{item}': use NAME[:WEIGHT], FILE.pt[:WEIGHT] or module:function[:WEIGHT]")
        if weight != weight or weight in (float("inf"), float("-inf")):
            raise UserError(f"--reward '{item}': the weight must be a finite number")
        name = ":".join(parts)
        if len(parts) == 2:
            fn = user_reward(*parts)
        elif name == "classifier":
            fn = ClassifierReward()
        elif name.endswith(".pt"):
            fn = ClassifierReward(name)
        else:
            raise UserError(f"--reward '{name}' is not a reward: use 'classifier', a reward classifier FILE.pt, "
                            f"or module:function")
        rewards.append((name, weight, fn))
    return rewards


def score(rewards, images, labels):
    """sum_i lambda_i R_i(images, labels) -> (total [B], {name: R_i [B]}); a reward not returning [B] is an error."""
    total, parts = 0, {}
    for name, weight, fn in rewards:
        r = fn(images, labels)
        if not (torch.is_tensor(r) and r.shape == (images.shape[0],)):
            got = tuple(r.shape) if torch.is_tensor(r) else type(r).__name__
            raise UserError(f"--reward {name} returned {got}; a reward must return a tensor of shape "
                            f"[{images.shape[0]}] (one value per image)")
        total, parts[name] = total + weight * r.float(), r.float()
    return total, parts


# ----------------------------------------------------------------------------------------------------------------
# python tteo.py train-reward
# ----------------------------------------------------------------------------------------------------------------
def main_train(argv=None):
    parser = ArgumentParser(prog="tteo.py train-reward", description="train the toy reward classifier")
    parser.add_argument("--data", default="toy", help="'toy' or a folder root/<class>/*.png")
    parser.add_argument("--out", default=REWARD_CLASSIFIER)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=1, help="not eval.py's seed 0, on purpose")
    args = parser.parse_args(argv)
    check_range("--steps", args.steps, low=1)
    check_range("--batch-size", args.batch_size, low=1)
    check_range("--lr", args.lr, low=0, low_open=True)

    def optimiser(params):
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)

    def lr_at(step):                                                     # linear decay to 0
        return args.lr * (1 - step / args.steps)
    net, stats = train_classifier(RewardClassifier, optimiser, lr_at, jitter, args.data, args.steps, args.batch_size,
                                  args.seed)
    save_checkpoint(dict(format=FORMAT, kind="reward", config=dict(nclass=net.nclass, width=net.width),
                         model=net.state_dict(), stats=dict(stats, seed=args.seed)), args.out)
    print(f"wrote {args.out}: {stats}")


if __name__ == "__main__":
    from config import cli

    def demo():
        images, labels, _ = load_images("toy", "test", n=500)
        reward = ClassifierReward()
        r = reward(images, labels)
        wrong = reward(images, (labels + 1) % 10)
        print(f"reward classifier: mean log p(true class) {r.mean():.3f}, of a wrong class {wrong.mean():.3f}")
    cli(demo)
