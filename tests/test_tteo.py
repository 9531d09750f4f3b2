"""Rewards, reward fine-tuning and test-time search: a TTEO step moves e_init and no weight, ascends the reward,
best-of-1 with 0 iterations is plain one-step sampling bit for bit, every (N, iterations) cell of a combined search
is the search with that N and iteration count, compute is counted, user rewards load or fail in one line, and the
reward classifier is not the evaluation network."""
import json
import os
import sys
from collections import Counter

import pytest
import torch

import distill
import soft_refine
import tteo
from config import UserError
from eval import FEATURES, FeatureNet, load_features
from generator import generate, init_embeddings, make_generator, token_init
from rewards import REWARD_CLASSIFIER, ClassifierReward, RewardClassifier, load_reward_classifier, parse_rewards, score
from teacher import tokens_to_images
from test_soft import FAST, SOFT_FAST, maskbit_pair, maskgit_pair

SETTINGS = dict(r_init=0.6, sigma_init=0.1, temperature=0.7, soft_temperature=0.5)


def brightness(images, labels):
    """A smooth toy reward: mean brightness, a bit more for class 1."""
    return images.mean((1, 2, 3)) * (1 + (labels == 1).float())


@pytest.fixture(params=[maskbit_pair, maskgit_pair], ids=["maskbit", "maskgit"])
def pair(request):
    teacher, tok = request.param()
    return make_generator(teacher).eval().requires_grad_(False), tok.requires_grad_(False)


def test_a_tteo_step_moves_e_init_and_no_weight(pair):
    gen, tok = pair
    weights = {k: v.clone() for k, v in list(gen.state_dict().items()) + list(tok.state_dict().items())}
    labels, g = torch.tensor([0, 1, 2]), torch.Generator().manual_seed(0)
    e = init_embeddings(gen, token_init(gen, 3, 0.6, g), 0.1, g)
    rewards = [("brightness", 1.0, brightness)]
    e_new, _, _ = tteo.tteo_step(gen, tok, e, labels, rewards, 0.2, 0.5, Counter())
    assert not torch.equal(e_new, e) and e_new.shape == e.shape
    for k, v in list(gen.state_dict().items()) + list(tok.state_dict().items()):
        assert torch.equal(v, weights[k]), k
    assert all(p.grad is None for p in list(gen.parameters()) + list(tok.parameters()))


def test_small_steps_ascend_the_reward(pair):
    gen, tok = pair
    labels, g = torch.tensor([0, 1, 2]), torch.Generator().manual_seed(1)
    e = init_embeddings(gen, token_init(gen, 3, 0.6, g), 0.1, g)
    rewards, values = [("brightness", 1.0, brightness)], []
    for _ in range(4):
        e, _, r = tteo.tteo_step(gen, tok, e, labels, rewards, 0.05, 0.5, Counter())
        values.append(r)
    values = torch.stack(values)                                       # [iterations, B]: the reward before each step
    assert (values[1:] >= values[:-1]).all() and (values[-1] > values[0]).all()


def test_a_tteo_step_is_each_images_own():
    """The step ascends the batch's *sum* of rewards, so each image moves exactly as it would alone (a mean would
    shrink every step by the batch size)."""
    teacher, tok = maskbit_pair()
    gen, tok = make_generator(teacher).eval().requires_grad_(False), tok.requires_grad_(False)
    labels, g = torch.tensor([0, 1, 2]), torch.Generator().manual_seed(2)
    e = init_embeddings(gen, token_init(gen, 3, 0.6, g), 0.1, g)
    rewards = [("brightness", 1.0, brightness)]
    together, _, _ = tteo.tteo_step(gen, tok, e, labels, rewards, 0.2, 0.5, Counter())
    alone = torch.cat([tteo.tteo_step(gen, tok, e[i:i + 1], labels[i:i + 1], rewards, 0.2, 0.5, Counter())[0]
                       for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-6)
    assert (together - e).abs().amax((1, 2)).min() > 1e-4, "every image moved"


def test_a_tteo_step_is_plain_gradient_ascent():
    """e_new = e + lr dR/de exactly (SGD, Soft-Di[M]O Sec. 2.6): not a signed, normalised or clipped step."""
    teacher, tok = maskbit_pair()
    gen, tok = make_generator(teacher).eval().requires_grad_(False), tok.requires_grad_(False)
    labels, g = torch.tensor([0, 1]), torch.Generator().manual_seed(3)
    e = init_embeddings(gen, token_init(gen, 2, 0.6, g), 0.1, g)
    rewards = [("brightness", 1.0, brightness)]
    e_new, _, _ = tteo.tteo_step(gen, tok, e, labels, rewards, 0.7, 0.5, Counter())
    leaf = e.clone().requires_grad_(True)
    images = soft_refine.soft_images(tok, torch.softmax(gen.forward_embeddings(leaf, labels).float() / 0.5, -1))
    grad, = torch.autograd.grad(brightness(images, labels).sum(), leaf)
    torch.testing.assert_close(e_new, e + 0.7 * grad, rtol=1e-5, atol=1e-7)
    assert grad.abs().max() < 0.1, "small gradients: a sign step (lr * +-1) could not pass the line above"


def test_best_of_one_without_iterations_is_plain_sampling(pair):
    gen, tok = pair
    labels, rewards = torch.tensor([0, 1, 2, 0, 1]), [("brightness", 1.0, brightness)]
    out, counts = tteo.search(gen, tok, labels, rewards, rewards, SETTINGS, 1, 0, 0.2, seed=7)
    plain = tokens_to_images(gen, tok, generate(gen, labels, 0.6, 0.1, 0.7, torch.Generator().manual_seed(7)))
    assert torch.equal(out["cells"][(1, 0)]["images"], plain) and torch.equal(out["before"]["images"], plain)
    assert counts == Counter(generator_forward=1, decoder_forward=1, reward=1)


def test_every_cell_of_a_combined_search_is_that_search(pair):
    """The table computes all (N, k) cells in one pass; each must equal the search run with N and k alone."""
    gen, tok = pair
    labels, rewards = torch.tensor([0, 1, 2, 1]), [("brightness", 1.0, brightness)]
    combined, _ = tteo.search(gen, tok, labels, rewards, rewards, SETTINGS, 3, 2, 0.2, 3, record=[0, 1, 2],
                              keep=[1, 2, 3])
    for n, k in ((1, 0), (2, 1), (3, 2), (3, 0), (1, 2)):
        alone, counts = tteo.search(gen, tok, labels, rewards, rewards, SETTINGS, n, k, 0.2, 3)
        for key in ("images", "score", "choice"):
            assert torch.equal(combined["cells"][(n, k)][key], alone["cells"][(n, k)][key]), (n, k, key)
        assert counts["generator_forward"] == n * (k + 1) and counts["generator_backward"] == n * k
        assert counts["decoder_forward"] == n * (k + 1) and counts["decoder_backward"] == n * k
    best = combined["cells"][(3, 2)]
    assert (best["score"] >= combined["cells"][(1, 2)]["score"]).all(), "best of 3 is at least candidate 0"


def test_search_is_deterministic_and_selects_by_the_score(pair):
    gen, tok = pair
    labels, rewards = torch.tensor([2, 0, 1]), [("brightness", 1.0, brightness)]
    a, _ = tteo.search(gen, tok, labels, rewards, rewards, SETTINGS, 3, 1, 0.2, 5)
    b, _ = tteo.search(gen, tok, labels, rewards, rewards, SETTINGS, 3, 1, 0.2, 5)
    assert torch.equal(a["cells"][(3, 1)]["images"], b["cells"][(3, 1)]["images"])
    cell = a["cells"][(3, 1)]
    torch.testing.assert_close(cell["score"], brightness(cell["images"], labels), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# --reward parsing and user rewards.
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("import torch\nNOT_CALLABLE = 3\n"
                                            "def bright(images, labels):\n    return images.mean((1, 2, 3))\n"
                                            "def wrong_shape(images, labels):\n    return images.mean()\n")
    monkeypatch.chdir(tmp_path)
    yield "my_rewards"
    sys.modules.pop("my_rewards", None)


def test_user_reward_loads_with_a_weight(user_module):
    (name, weight, fn), = parse_rewards("my_rewards:bright:0.5")
    assert (name, weight) == ("my_rewards:bright", 0.5)
    images = torch.rand(3, 3, 8, 8)
    total, parts = score([(name, weight, fn)], images, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(total, 0.5 * images.mean((1, 2, 3)))


@pytest.mark.parametrize("spec,message", [
    ("my_rewards:missing", "has no 'missing'"),
    ("my_rewards:NOT_CALLABLE", "is a int, not a callable"),
    ("no_such_module:fn", "cannot import module 'no_such_module'"),
    ("hps", "is not a reward"),
    ("", "--reward is empty"),
    ("classifier:nan", "finite"),
])
def test_bad_reward_specs_are_one_line_errors(user_module, spec, message):
    with pytest.raises(UserError, match=message) as e:
        parse_rewards(spec)
    assert "\n" not in str(e.value)


def test_a_reward_of_the_wrong_shape_is_an_error(user_module):
    with pytest.raises(UserError, match=r"returned \(\); a reward must return a tensor of shape \[2\]"):
        score(parse_rewards("my_rewards:wrong_shape"), torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))


def test_the_reward_classifier_is_not_the_evaluation_network():
    reward_net, (eval_net, _) = load_reward_classifier(), load_features(FEATURES)
    assert isinstance(reward_net, RewardClassifier) and not isinstance(reward_net, FeatureNet)
    shapes = [sorted(tuple(p.shape) for p in net.parameters()) for net in (reward_net, eval_net)]
    assert shapes[0] != shapes[1], "another architecture, so other weights"
    with pytest.raises(UserError, match="not a reward-classifier checkpoint"):
        load_reward_classifier(FEATURES)
    from data import load_images
    images, labels, _ = load_images("toy", "test", n=300)
    r = ClassifierReward(REWARD_CLASSIFIER)
    with torch.no_grad():
        right, wrong = r(images, labels), r(images, (labels + 1) % 10)
        accuracy = reward_net(images).argmax(1).eq(labels).float().mean()
    assert accuracy > 0.95 and (right > wrong).float().mean() > 0.95 and right.max() <= 0


def test_the_classifier_reward_is_the_log_probability_of_the_clamped_image():
    """R(x, c) = log p(c | clamp(x, 0, 1)): exp(R) sums to 1 over the classes, and an image outside [0, 1] (soft
    decoding is unclamped) scores as its clamped self."""
    r = ClassifierReward(REWARD_CLASSIFIER)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.3   # in [-0.3, 1.3]
    with torch.no_grad():
        every_class = torch.stack([r(images, torch.full((4,), c)) for c in range(r.net.nclass)], 1)  # [B, C]
        clamped = r(images.clamp(0, 1), torch.arange(4))
    torch.testing.assert_close(every_class.exp().sum(1), torch.ones(4))
    assert torch.equal(every_class[torch.arange(4), torch.arange(4)], clamped)


# ----------------------------------------------------------------------------------------------------------------
# The commands, small.
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def init_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dimo")
    distill.main(["--teacher", "maskbit", "--steps", "2", "--out", str(out), "--cache", str(out / "cache"), *FAST])
    return out


def test_tteo_sample_writes_grid_json_and_counts(init_run, tmp_path):
    out = tmp_path / "grid.png"
    tteo.main(["sample", "--run", str(init_run), "--n", "6", "--best-of", "2", "--iters", "2", "--chunk", "4",
               "--out", str(out), "--grid", "pairs"])
    m = json.load(open(tmp_path / "grid.json"))
    assert out.exists() and len(m["reward_before"]) == len(m["reward_after"]) == 6
    assert m["passes_per_image"]["generator_forward"] == 2 * 3 and m["passes_per_image"]["generator_backward"] == 4
    assert m["reward_after_mean"] == pytest.approx(sum(m["reward_after"]) / 6, abs=1e-3)
    tteo.main(["sample", "--run", str(init_run), "--n", "6", "--best-of", "1", "--iters", "0", "--chunk", "6",
               "--out", str(tmp_path / "plain.png")])
    plain = json.load(open(tmp_path / "plain.json"))
    assert plain["reward_before"] == plain["reward_after"], "N = 1, 0 iterations: nothing changes"


def test_reward_fine_tuning_reaches_the_generator(init_run, tmp_path):
    cache = str(tmp_path / "cache")
    for flags in (["--reward", "classifier"], ["--reward", "classifier:2", "--w-dimo", "0", "--relax", "gumbel-st"]):
        out = tmp_path / "rw"
        soft_refine.main(["--init", str(init_run), "--out", str(out), "--cache", cache, "--steps", "3",
                          "--log-every", "1", *FAST, *SOFT_FAST, *flags])
        m, log = json.load(open(out / "metrics.json")), [json.loads(x) for x in open(out / "log.jsonl")]
        assert "loss_reward" in log[-1] and "loss_gan" not in log[-1], "reward only, no GAN unless --w-gan"
        assert ("loss_dm" in log[-1]) == (flags[-1] == "classifier")
        assert isinstance(m["reward_generator"], float) and isinstance(m["reward_dimo"], float)
        assert m["w_gan"] == 0 and m["reward"] == flags[1]
        refined = soft_refine.load_checkpoint(str(out / "checkpoint.pt"))
        init = soft_refine.load_checkpoint(str(init_run / "checkpoint.pt"))
        assert any(not torch.equal(init["generator"][k], refined["generator"][k]) for k in init["generator"])
        os.rename(out, tmp_path / f"done-{len(flags)}")


def test_tteo_table_and_train_reward(init_run, tmp_path, capsys):
    tteo.main(["table", "--run", str(init_run), "--n", "12", "--best-of", "1,2", "--iters", "0,1", "--chunk", "8",
               "--out", str(tmp_path / "table.json")])
    rows = json.load(open(tmp_path / "table.json"))["cells"]
    assert [(r["best_of"], r["iters"]) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert [r["generator_forward"] for r in rows] == [1, 2, 2, 4] and all("fid" in r for r in rows)
    tteo.main(["train-reward", "--steps", "3", "--batch-size", "8", "--out", str(tmp_path / "r.pt")])
    assert isinstance(load_reward_classifier(str(tmp_path / "r.pt")), RewardClassifier)
    assert "wrote" in capsys.readouterr().out
    tteo.main([])                                                      # the demo
    assert "best of 2, 2 TTEO iterations" in capsys.readouterr().out


def test_reward_run_resumes_bitwise(init_run, tmp_path):
    common = ["--init", str(init_run), "--cache", str(tmp_path / "cache"), "--reward", "classifier", *FAST, *SOFT_FAST,
              "--lr-decay", "0"]                 # a decaying lr follows --steps, which this test raises at the resume
    soft_refine.main([*common, "--out", str(tmp_path / "straight"), "--steps", "4", "--save-every", "2"])
    soft_refine.main([*common, "--out", str(tmp_path / "split"), "--steps", "2"])
    soft_refine.main(["--resume", str(tmp_path / "split"), "--steps", "4"])
    a, b = (soft_refine.load_checkpoint(str(tmp_path / d / "checkpoint.pt")) for d in ("straight", "split"))
    assert a["step"] == b["step"] == 4 and b["args"]["reward"] == "classifier"
    for key in ("generator", "ema", "aux"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
