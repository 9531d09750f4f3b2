"""Soft-Di[M]O: soft embeddings reproduce the hard path for one-hot logits and carry exact gradients; the GAN masking,
the discriminator step that never touches a teacher weight; soft_refine.py's runs, ablation switches and resume."""
import json
import os
import shutil
import subprocess
from types import SimpleNamespace

import pytest
import torch

import distill
import soft_refine
from checkpoints import load_checkpoint
from config import PRESETS, UserError, runtime
from soft_refine import Discriminator, mask_entries, relax, soft_embedding, soft_images
from maskbit import LFQBert
from maskgit import MaskTransformer
from tokenizer import LFQTokenizer, VQGAN


def maskbit_pair():
    torch.manual_seed(0)
    teacher = LFQBert(img_size=16, input_stride=4, hidden_dim=32, codebook_size=2 ** 6, codebook_splits=2, depth=2,
                      heads=2, mlp_dim=64, dropout=0.0, nclass=3).eval()
    tok = LFQTokenizer(dict(token_size=6, num_channels=3, hidden_channels=32, channel_mult=[1, 1, 1],
                            num_resolutions=3, num_res_blocks=1, sample_with_conv=True)).eval()
    return teacher, tok


def maskgit_pair():
    torch.manual_seed(0)
    teacher = MaskTransformer(img_size=64, hidden_dim=32, codebook_size=16, depth=2, heads=2, mlp_dim=32,
                              dropout=0.0, nclass=3).eval()
    tok = VQGAN(dict(double_z=False, z_channels=8, resolution=64, in_channels=3, out_ch=3, ch=32,
                     ch_mult=[1, 1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[], dropout=0.0), 16, 8).eval()
    return teacher, tok


@pytest.mark.parametrize("pair", [maskbit_pair, maskgit_pair], ids=["maskbit", "maskgit"])
def test_one_hot_logits_reproduce_the_hard_path(pair):
    """z = 1e4 x one-hot: the soft embedding is the token's embedding, so the teacher's logits and the decoded
    images equal the hard path's exactly (MaskGIT: including a drawn mask id, fed as the mask token and decoded
    as code K-1)."""
    teacher, tok = pair()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, teacher.vocab, (3, teacher.seq_len, teacher.splits), generator=g)
    if teacher.splits == 1:
        tokens[0, :3] = teacher.mask_id                                  # the mask class is a class of the head
    z = 1e4 * torch.nn.functional.one_hot(tokens, teacher.vocab).float()
    probs = relax(z)
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert torch.equal(teacher.forward_embeddings(soft_embedding(teacher, probs), labels),
                           teacher.logits(tokens, labels))
        assert torch.equal(soft_images(tok, probs), tok.indices_to_images(teacher.to_indices(tokens)))


@pytest.mark.parametrize("pair", [maskbit_pair, maskgit_pair], ids=["maskbit", "maskgit"])
def test_soft_embedding_gradient_matches_finite_differences(pair):
    teacher, tok = pair()
    teacher, tok = teacher.double(), tok.double()
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, teacher.seq_len, teacher.splits, teacher.vocab, generator=g, dtype=torch.float64)
    w = torch.randn(1, teacher.seq_len, teacher.pos_emb.shape[-1], generator=g, dtype=torch.float64)

    def scalar(logits):                                                  # a scalar of Emb_phi(z) and of the image
        p = torch.softmax(logits, -1)
        return (soft_embedding(teacher, p) * w).sum() + soft_images(tok, p).square().mean()
    z.requires_grad_(True)
    (grad,) = torch.autograd.grad(scalar(z), z)
    assert grad.abs().sum() > 0
    for k in range(8):                                                   # central differences on random entries
        idx = tuple(int(torch.randint(0, s, (1,), generator=g)) for s in z.shape)
        e = torch.zeros_like(z)
        e[idx] = 1e-5
        with torch.no_grad():
            fd = (scalar(z + e) - scalar(z - e)) / 2e-5
        assert fd.item() == pytest.approx(grad[idx].item(), rel=1e-5, abs=1e-8)


def test_gumbel_st_is_hard_forward_soft_backward():
    z = torch.randn(2, 5, 2, 8, requires_grad=True)
    y = relax(z, "gumbel-st", torch.Generator().manual_seed(0))
    assert torch.equal(y.detach().sum(-1), torch.ones(2, 5, 2)) and set(y.detach().unique().tolist()) <= {0.0, 1.0}
    (grad,) = torch.autograd.grad((y * torch.randn(8)).sum(), z)
    assert grad.abs().sum() > 0
    draws = torch.stack([relax(z.detach()[:1, :1, :1], "gumbel-st", torch.Generator().manual_seed(s)).argmax(-1)
                         for s in range(4000)]).flatten()                # Gumbel-max draws follow softmax(z)
    freq = torch.bincount(draws, minlength=8).float() / len(draws)
    torch.testing.assert_close(freq, torch.softmax(z.detach()[0, 0, 0], -1), atol=0.025, rtol=0)


@pytest.mark.parametrize("pair", [maskbit_pair, maskgit_pair], ids=["maskbit", "maskgit"])
def test_gan_masking_counts_and_mask_embedding(pair):
    teacher, _ = pair()
    tokens = torch.randint(0, teacher.vocab - (teacher.splits == 1), (64, teacher.seq_len, teacher.splits))
    features = teacher.features(tokens)
    masked, r = mask_entries(teacher, features, 0.95, torch.Generator().manual_seed(0))
    assert r.min() >= 0 and r.max() <= 0.95 and r.max() > 0.5
    m = teacher.seq_len * teacher.splits
    width = features.shape[-1] // teacher.splits
    entries = masked.reshape(64, m, width)                               # [B, N, F] -> [B, M, F/S]
    mask_feature = teacher.features(torch.full((1, 1, teacher.splits), teacher.mask_id))[0, 0, :width]
    is_mask = (entries == mask_feature).all(-1)
    assert torch.equal(is_mask.sum(1), (r * m).round().long())          # exactly round(r M) entries per sample
    assert torch.equal(entries[~is_mask], features.reshape(64, m, width)[~is_mask])
    _, r0 = mask_entries(teacher, features, 0.0, torch.Generator().manual_seed(0))
    assert (r0 == 0).all()


def test_gan_masking_count_is_round_r_m_of_the_drawn_r():
    """The count is round(r M) of the r drawn first from the stream (r ~ U[0, r_max]), sample by sample: floor(r M)
    would also pass the test above, whose r is the realised ratio count / M."""
    teacher, _ = maskbit_pair()
    features = teacher.features(torch.randint(0, teacher.vocab, (200, teacher.seq_len, teacher.splits)))
    m = teacher.seq_len * teacher.splits
    _, ratio = mask_entries(teacher, features, 0.95, torch.Generator().manual_seed(3))
    r = 0.95 * torch.rand(200, generator=torch.Generator().manual_seed(3))  # the same stream's first draw
    assert torch.equal(ratio * m, (r * m).round())


def test_discriminator_step_never_changes_the_teacher():
    teacher, _ = maskbit_pair()
    teacher.requires_grad_(False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    disc = Discriminator(32, 3, (1, 2), hidden=16)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    labels = torch.tensor([0, 1, 2])
    fake = soft_embedding(teacher, torch.softmax(torch.randn(3, teacher.seq_len, 2, 8, requires_grad=True), -1))
    real = teacher.input_embed(teacher.features(torch.randint(0, 8, (3, teacher.seq_len, 2))))
    r = torch.full((3,), 0.5)
    losses = []
    for _ in range(5):
        d_real = disc(teacher.hidden_states(real, labels, disc.layers), labels, r)
        d_fake = disc(teacher.hidden_states(fake.detach(), labels, disc.layers), labels, r)
        loss = torch.nn.functional.softplus(-d_real).mean() + torch.nn.functional.softplus(d_fake).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], "the heads learn to tell real from fake"
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in teacher.parameters())


def tiny_run():
    """A run namespace with just what gan_term, d_step and reward_term read: the tiny MaskBit pair as the frozen
    teacher (and discriminator backbone), two heads, a few real tokens, one seeded stream."""
    teacher, tok = maskbit_pair()
    teacher.requires_grad_(False)
    a = SimpleNamespace(soft_temperature=0.5, relax="soft", r_max=0.5, w_gan=3.0, d_backbone="teacher", batch_size=3,
                        w_reward=2.0)
    disc = Discriminator(32, 3, (1, 2), hidden=16)
    torch.manual_seed(5)
    real = torch.randint(0, teacher.vocab, (6, teacher.seq_len, teacher.splits))
    return SimpleNamespace(args=a, teacher=teacher, aux=teacher, disc=disc, disc_call=disc, rt=runtime("cpu"),
                           rng=torch.Generator().manual_seed(7), task=SimpleNamespace(tokenizer=tok),
                           opt_d=torch.optim.SGD(disc.parameters(), lr=0.0), real_tokens=real,
                           real_labels=torch.arange(6) % 3)


def test_gan_term_is_the_generator_loss_on_soft_embeddings_and_only_z_learns():
    """L_GAN = w_GAN E[softplus(-D)] (non-saturating) of the masked soft features of softmax(z / T), recomputed here
    from the same stream; its gradient reaches z and no weight of D or its backbone."""
    run = tiny_run()
    z = torch.randn(3, run.teacher.seq_len, 2, 8, requires_grad=True)
    labels = torch.tensor([0, 1, 2])
    value, stats = soft_refine.gan_term(run, z, labels)
    g = torch.Generator().manual_seed(7)
    features, r = mask_entries(run.teacher, run.teacher.soft_features(torch.softmax(z.detach() / 0.5, -1)), 0.5, g)
    with torch.no_grad():
        d = run.disc(run.teacher.hidden_states(run.teacher.input_embed(features), labels, (1, 2)), labels, r)
    expected = torch.nn.functional.softplus(-d).mean()
    assert value.item() == pytest.approx(3.0 * expected.item(), rel=1e-5)
    assert stats["loss_gan"] == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert z.grad.abs().sum() > 0
    assert all(p.grad is None for p in (*run.disc.parameters(), *run.teacher.parameters()))
    assert all(p.requires_grad for p in run.disc.parameters()), "the heads are trainable again afterwards"
    assert len(run.fake_cache[0]) == 2 and not run.fake_cache[0][0].requires_grad


def test_d_step_loss_is_its_formula():
    """The discriminator's loss: softplus(-D(real)) + softplus(D(fake)) on real tokens masked like the fakes; with
    lr 0 nothing moves, so D can be evaluated again by hand on the same draws; a step at lr > 0 moves the heads and
    not the teacher."""
    run = tiny_run()
    labels = torch.tensor([0, 1, 2])
    features, r = mask_entries(run.teacher, run.teacher.soft_features(torch.softmax(torch.randn(
        3, run.teacher.seq_len, 2, 8), -1)), 0.5, torch.Generator().manual_seed(1))
    with torch.no_grad():
        fake = (run.teacher.hidden_states(run.teacher.input_embed(features), labels, (1, 2)), labels, r)
    stats = soft_refine.d_step(run, fake, 0.0, 0)
    g = torch.Generator().manual_seed(7)                                # d_step's draws, in its order
    idx = torch.randint(6, (3,), generator=g)
    real_f, real_r = mask_entries(run.teacher, run.teacher.features(run.real_tokens[idx]).float(), 0.5, g)
    real_labels = run.real_labels[idx]
    with torch.no_grad():
        real_states = run.teacher.hidden_states(run.teacher.input_embed(real_f), real_labels, (1, 2))
        d_real, d_fake = run.disc(real_states, real_labels, real_r), run.disc(fake[0], labels, r)
    softplus = torch.nn.functional.softplus
    assert stats["loss_d"] == pytest.approx((softplus(-d_real).mean() + softplus(d_fake).mean()).item(), rel=1e-5)
    assert stats["d_real"] == pytest.approx(torch.sigmoid(d_real).mean().item(), rel=1e-5)
    assert stats["d_fake"] == pytest.approx(torch.sigmoid(d_fake).mean().item(), rel=1e-5)
    heads, teacher = [p.clone() for p in run.disc.parameters()], [p.clone() for p in run.teacher.parameters()]
    soft_refine.d_step(run, fake, 0.5, 1)                               # a step at lr 0.5 moves the heads only
    assert any(not torch.equal(p, q) for p, q in zip(run.disc.parameters(), heads))
    assert all(torch.equal(p, q) for p, q in zip(run.teacher.parameters(), teacher))


def test_reward_term_is_minus_the_weighted_reward_of_the_soft_decoded_images():
    """L_reward = -w_reward E[sum_i lambda_i R_i(Dec(Emb_Dec(softmax(z / T))), c)]; its gradient reaches z."""
    run = tiny_run()
    run.rewards = [("mean", 0.5, lambda images, labels: images.mean((1, 2, 3)) + labels)]
    z = torch.randn(3, run.teacher.seq_len, 2, 8, requires_grad=True)
    labels = torch.tensor([0, 1, 2])
    value, stats = soft_refine.reward_term(run, z, labels)
    images = soft_images(run.task.tokenizer, torch.softmax(z.detach() / 0.5, -1))
    expected = -2.0 * (0.5 * (images.mean((1, 2, 3)) + labels)).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["loss_reward"] == pytest.approx(expected.item() / 2.0, rel=1e-5)
    value.backward()
    assert z.grad.abs().sum() > 0


def test_hidden_states_are_the_forward_pass():
    """The discriminator reads the same blocks that compute the logits: the last state gives the logits."""
    for teacher in (maskbit_pair()[0], maskgit_pair()[0]):
        tokens = torch.randint(0, teacher.vocab, (2, teacher.seq_len, teacher.splits))
        e, labels = teacher.input_embed(teacher.features(tokens)), torch.tensor([0, 2])
        with torch.no_grad():
            states = teacher.hidden_states(e, labels, (1, 2))
            assert len(states) == 2 and states[0].shape == (2, teacher.seq_len + 1, 32)
            assert not torch.equal(states[0], states[1])
            assert torch.equal(teacher.hidden_states(e, labels, (2,))[0], states[1])


# ----------------------------------------------------------------------------------------------------------------
# soft_refine.py end to end, small.
# ----------------------------------------------------------------------------------------------------------------
FAST = ["--batch-size", "4", "--eval-n", "20", "--tune-temperature", "", "--device", "cpu"]
SOFT_FAST = ["--d-warmup", "2", "--monitor-n", "0"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def init_run(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("dimo")
    # at the paper's sigma 0.1 and another grid than the stage's, so that the stage's own sigma and grid show
    distill.main(["--teacher", "maskbit", "--steps", "2", "--out", str(out), "--cache", cache, "--sigma-init", "0.1",
                  "--tune-sigma", "0.09", *FAST])
    return out


def soft(init_run, cache, out, *extra):
    soft_refine.main(["--init", str(init_run), "--out", str(out), "--cache", cache, "--steps", "4",
                      "--log-every", "1", *FAST, *SOFT_FAST, *extra])
    return json.load(open(out / "metrics.json")), [json.loads(line) for line in open(out / "log.jsonl")]


def test_soft_refine_runs_and_reports_every_model(init_run, cache, tmp_path):
    m, log = soft(init_run, cache, tmp_path / "soft", "--monitor-n", "40", "--eval-every", "2")
    for key in ("fid_generator", "fid_dimo", "fid_teacher", "fid_teacher_1step", "class_acc_generator",
                "class_acc_dimo", "class_acc_teacher"):
        assert isinstance(m[key], float), key
    for key in ("loss_gan", "loss_d", "d_real", "d_fake", "entropy", "divergence", "loss_dm"):
        assert key in log[-1], key
    assert [r["step"] for r in log] == [1, 2, 3, 4] and (tmp_path / "soft" / "samples.png").exists()
    init = json.load(open(init_run / "metrics.json"))                   # same teacher, sampler, n, seed, scorer:
    assert set(init["teacher_tokens"].values()) == {"sampled"}           # the Di[M]O run's samples, from the cache
    assert all(source.startswith(cache) for source in m["teacher_tokens"].values())
    assert (m["teacher"], m["teacher_1step"]) == (init["teacher"], init["teacher_1step"])
    assert [("fid_40" in r) for r in log] == [True, False, True, True], "in-training FID at steps 1, 3 and the end"
    init = load_checkpoint(str(init_run / "checkpoint.pt"))
    refined = load_checkpoint(str(tmp_path / "soft" / "checkpoint.pt"))
    assert any(not torch.equal(init["generator"][k], refined["generator"][k]) for k in init["generator"])


@pytest.mark.parametrize("flags", [["--w-dimo", "0"], ["--relax", "gumbel-st"], ["--d-backbone", "aux"],
                                   ["--r-max", "0", "--weight-decay", "0.01"]], ids=lambda f: " ".join(f))
def test_ablation_switches_run(init_run, cache, tmp_path, flags):
    m, log = soft(init_run, cache, tmp_path / "soft", *flags)
    assert m["fid_generator"] > 0 and "loss_gan" in log[-1]
    if flags[0] == "--w-dimo":
        assert "loss_dm" not in log[-1], "GAN only: no Di[M]O term"


def test_resume_is_bitwise(init_run, cache, tmp_path):
    const = ["--lr-decay", "0"]                  # a decaying lr follows --steps, which this test raises at the resume
    straight, _ = soft(init_run, cache, tmp_path / "straight", "--save-every", "2", *const)
    soft_refine.main(["--init", str(init_run), "--out", str(tmp_path / "split"), "--cache", cache, "--steps", "2",
                      *FAST, *SOFT_FAST, *const])
    soft_refine.main(["--resume", str(tmp_path / "split"), "--steps", "4"])
    a, b = (load_checkpoint(str(tmp_path / d / "checkpoint.pt")) for d in ("straight", "split"))
    assert a["step"] == b["step"] == 4
    for key in ("generator", "ema", "aux", "disc"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_two_ranks_stay_identical(init_run, cache, tmp_path):
    """Under DDP the generator, EMA, auxiliary model and discriminator heads end equal on both ranks."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = ["--init", str(init_run), "--cache", cache, "--out", str(tmp_path / "ddp"), "--steps", "3", *FAST,
            *SOFT_FAST]
    run = subprocess.run(["torchrun", "--standalone", "--nproc_per_node=2", "soft_refine.py", *args], cwd=root,
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-2000:]
    m = json.load(open(tmp_path / "ddp" / "metrics.json"))
    assert m["world_size"] == 2 and m["global_batch"] == 8 and m["ranks_identical"]


@pytest.fixture(scope="module")
def soft_run(init_run, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("soft")
    return out, soft(init_run, cache, out)[1]


def test_lr_decay_is_this_stages_own(init_run, cache, soft_run, tmp_path):
    """By default the stage's lr decays linearly to 0 over its own steps (the preset's lr_decay, not the --init run's
    schedule continued); --lr-decay 0 keeps it constant after warm-up."""
    _, const = soft(init_run, cache, tmp_path / "const", "--lr-decay", "0")
    lr = [r["lr"] for r in const]
    assert lr == pytest.approx([1e-4 * (s + 1) / 100 for s in range(4)])     # warm-up of the --init run's 100 steps
    assert [r["lr"] for r in soft_run[1]] == pytest.approx([v * (4 - s) / 4 for s, v in enumerate(lr)])


def test_the_stage_trains_at_its_own_sigma(init_run, cache, soft_run, tmp_path):
    """The toy stage trains the generator at input perturbation 0.06 (its preset), not the --init run's 0.1, and
    tunes the inference sigma on a grid around it; --sigma-init sets another, and one of 1 or more is refused."""
    dimo = [json.loads(line) for line in open(init_run / "log.jsonl")]
    assert {r["sigma"] for r in dimo} == {0.1}
    assert {r["sigma"] for r in soft_run[1]} == {PRESETS["maskbit-toy"]["soft"]["sigma_init"]} == {0.06}
    m, config = (json.load(open(soft_run[0] / name)) for name in ("metrics.json", "config.json"))
    assert m["sigma_init"] == config["sigma_init"] == 0.06
    assert set(map(float, m["sigma_tuning"])) == {0.04, 0.06, 0.08} and 0.04 <= m["gen_sigma"] <= 0.08
    init_grid = json.load(open(init_run / "config.json"))["tune_sigma"]
    assert config["tune_sigma"] == PRESETS["maskbit-toy"]["soft"]["tune_sigma"] != init_grid
    _, log = soft(init_run, cache, tmp_path / "s", "--sigma-init", "0.08", "--tune-sigma", "0.07")
    assert {r["sigma"] for r in log} == {0.08}
    with pytest.raises(UserError, match="--sigma-init = 1.5"):
        soft(init_run, cache, tmp_path / "bad", "--sigma-init", "1.5")


def test_bench_draws_scores_runs_on_the_same_draws(init_run, soft_run, cache, capsys):
    """bench.py draws: draw 0 at the run's eval n reproduces the run's own reported FID, and the teacher's; a run
    against itself differs by exactly 0; the refined run is scored on the same draws."""
    import bench
    capsys.readouterr()
    runs = f"{init_run},{soft_run[0]},{init_run}"
    bench.main(["draws", "--runs", runs, "--first", "0", "--draws", "2", "--n", "20", "--teacher", "--cache", cache])
    teacher, *rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line[:1] == "{"]
    assert teacher["run"] == "teacher" and teacher["steps"] == 16
    assert teacher["fid"][0] == json.load(open(init_run / "metrics.json"))["fid_teacher"]
    assert all(r["ratio_to_teacher"] == pytest.approx(r["fid_mean"] / teacher["fid_mean"], abs=1e-3) for r in rows)
    assert [r["run"] for r in rows] == runs.split(",") and all(r["draws"] == [0, 1] for r in rows)
    for folder, row in zip(runs.split(","), rows):                       # draw 0 is the run's report draw
        m = json.load(open(os.path.join(folder, "metrics.json")))
        assert row["fid"][0] == m["fid_generator"] and row["recall"][0] == m["generator"]["recall"]
    assert rows[2]["fid"] == rows[0]["fid"] and rows[2]["fid_minus_first"] == 0
    assert rows[1]["fid_minus_first"] == pytest.approx(sum(b - a for a, b in zip(rows[0]["fid"], rows[1]["fid"]))
                                                           / 2, abs=1e-4)
    own = json.load(open(init_run / "metrics.json"))["gen_sigma"]            # --sigma: every run at one sigma
    assert rows[0]["sigma"] == own
    for sigma in (own, 0.3):
        bench.main(["draws", "--runs", str(init_run), "--first", "0", "--draws", "2", "--n", "20", "--sigma",
                    str(sigma)])
        row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert row["sigma"] == sigma and (row["fid"] == rows[0]["fid"]) == (sigma == own)
    # --like-first: the refined run at its start's temperature and sigma (and the start unchanged)
    bench.main(["draws", "--runs", f"{init_run},{soft_run[0]}", "--first", "0", "--draws", "2", "--n", "20",
                "--like-first"])
    start, stage = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line[:1] == "{"]
    assert start["fid"] == rows[0]["fid"] and (stage["temperature"], stage["sigma"]) == (start["temperature"], own)
