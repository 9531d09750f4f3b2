"""Di[M]O's maths: divergence gradients against autograd, the surrogate loss, token initialisation, and a toy
vocabulary where the right answer is known."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import config
from config import runtime
from distill import aux_loss, dimo_loss, dimo_surrogate, divergence_grad, entry_weights, main
from generator import draw_r_init, generate, generator_logits, make_generator, perturb, sigma_at, token_init
from masking import random_mask
from maskbit import LFQBert
from maskgit import MaskTransformer
from toy_vocab import family_joint, markov_joint

CASES = [("fkl", 0.0), ("rkl", 0.0), ("jeffreys", 0.3), ("jeffreys", -0.2), ("jeffreys", -0.4), ("jeffreys", 1.0)]


def analytic_divergence(logits_teacher, logits, beta):
    """D_beta(q || p) = (1-beta) KL(q || p) + beta KL(p || q) with p = softmax(logits), written out directly."""
    q, p = torch.softmax(logits_teacher, -1), torch.softmax(logits, -1)
    fkl = (q * (q.log() - p.log())).sum(-1)
    rkl = (p * (p.log() - q.log())).sum(-1)
    return (1 - beta) * fkl + beta * rkl


@pytest.mark.parametrize("divergence,beta", CASES)
def test_divergence_gradient_matches_autograd(divergence, beta):
    torch.manual_seed(0)
    z_teacher = torch.randn(3, 5, 2, 7, dtype=torch.float64) * 2
    z = (torch.randn(3, 5, 2, 7, dtype=torch.float64) * 2).requires_grad_(True)
    b = {"fkl": 0.0, "rkl": 1.0}.get(divergence, beta)
    value = analytic_divergence(z_teacher, z, b)
    (auto,) = torch.autograd.grad(value.sum(), z)
    g, d = divergence_grad(z_teacher, z.detach(), divergence, beta)
    torch.testing.assert_close(g.double(), auto, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(d.double(), value.detach(), atol=1e-5, rtol=1e-4)
    assert g.sum(-1).abs().max() < 1e-5, "a logit gradient of a softmax quantity sums to zero over the vocabulary"


@pytest.mark.parametrize("divergence,beta", CASES)
@pytest.mark.parametrize("normalisation", ["sum", "mean"])
def test_surrogate_gradient_is_the_divergence_gradient(divergence, beta, normalisation):
    """With the auxiliary distribution equal to softmax(z), d(surrogate)/dz = d(sum_masked w D(q || softmax(z)))/dz,
    and it is exactly zero on unmasked entries."""
    torch.manual_seed(1)
    z_teacher = torch.randn(4, 6, 2, 5) * 2
    z = (torch.randn(4, 6, 2, 5) * 2).requires_grad_(True)
    mask = torch.rand(4, 6, 2) < 0.5
    mask[0] = False                                                       # a sample with nothing masked
    g, _ = divergence_grad(z_teacher, z.detach(), divergence, beta)
    (grad_surrogate,) = torch.autograd.grad(dimo_surrogate(z, g, mask, normalisation), z)
    b = {"fkl": 0.0, "rkl": 1.0}.get(divergence, beta)
    w = entry_weights(mask, normalisation)
    (grad_direct,) = torch.autograd.grad((w * analytic_divergence(z_teacher, z, b)).sum(), z)
    torch.testing.assert_close(grad_surrogate, grad_direct, atol=1e-6, rtol=1e-4)
    assert (grad_surrogate[~mask] == 0).all()


def test_normalisations():
    mask = torch.zeros(2, 4, 1, dtype=torch.bool)
    mask[0, :1] = True
    mask[1, :4] = True
    torch.testing.assert_close(entry_weights(mask, "sum")[mask], torch.full((5,), 0.5))        # 1/B
    torch.testing.assert_close(entry_weights(mask, "mean")[0, 0, 0], torch.tensor(0.5))        # 1/(B L_M), L_M=1
    torch.testing.assert_close(entry_weights(mask, "mean")[1, :, 0], torch.full((4,), 0.125))  # L_M=4
    assert entry_weights(mask, "mean").sum().item() == pytest.approx(1.0)


def tiny_bit():
    torch.manual_seed(0)
    return LFQBert(img_size=32, hidden_dim=32, codebook_size=64, codebook_splits=2, depth=1, heads=2, mlp_dim=64,
                   nclass=5, input_stride=8).eval()


@pytest.mark.parametrize("r_init", [0.0, 0.3, 0.6, 0.95])
def test_token_init_exact_count(r_init):
    model = tiny_bit()
    x = token_init(model, 50, r_init, torch.Generator().manual_seed(0))
    assert x.shape == (50, 16, 2)
    counts = (x == model.mask_id).flatten(1).sum(1)
    assert (counts == round(32 * r_init)).all()
    visible = x[x != model.mask_id]
    assert visible.min() >= 0 and visible.max() < model.mask_id
    if r_init < 0.5:
        assert len(visible.unique()) == model.mask_id                     # uniform ids: every id shows up


def test_r_init_range_sigma_warmup_and_perturbation():
    g = torch.Generator().manual_seed(0)
    draws = [draw_r_init((0.1, 0.9), g) for _ in range(200)]
    assert 0.1 <= min(draws) < 0.2 and 0.8 < max(draws) <= 0.9
    assert draw_r_init(0.6, g) == 0.6
    assert sigma_at(0.1, 50, warmup=100) == pytest.approx(0.05) and sigma_at(0.1, 500, warmup=100) == 0.1
    e = torch.randn(4000, 64, generator=g)
    assert torch.equal(perturb(e, 0.0), e)
    out = perturb(e, 0.3, g)
    assert out.var().item() == pytest.approx(1.0, abs=0.02)               # variance preserving
    corr = ((out * e).mean() / (out.std() * e.std())).item()
    assert corr == pytest.approx(math.sqrt(1 - 0.09), abs=0.01)


def test_generator_frozen_layers_and_determinism():
    for teacher in (tiny_bit(), MaskTransformer(img_size=32, hidden_dim=32, codebook_size=16, depth=1, heads=2,
                                                mlp_dim=32, nclass=3)):
        gen = make_generator(teacher)
        frozen = {n for n, p in gen.named_parameters() if not p.requires_grad}
        assert frozen == {n for n, _ in gen.named_parameters() if n.split(".")[0] in teacher.FROZEN} and frozen
        assert all(p.requires_grad for n, p in gen.named_parameters() if n not in frozen)
        gen.eval()                                                        # inference: dropout off
        labels = torch.tensor([0, 1, 2])
        a = generate(gen, labels, 0.6, 0.1, 1.0, torch.Generator().manual_seed(3))
        b = generate(gen, labels, 0.6, 0.1, 1.0, torch.Generator().manual_seed(3))
        assert torch.equal(a, b)
        x_init = token_init(gen, 3, 0.6, torch.Generator().manual_seed(4))
        with torch.no_grad():                                             # with sigma = 0, x_init decides the logits
            c = generator_logits(gen, labels, x_init, 0.0, torch.Generator().manual_seed(5))
            d = generator_logits(gen, labels, x_init, 0.0, torch.Generator().manual_seed(6))
            e = generator_logits(gen, labels, x_init, 0.1, torch.Generator().manual_seed(6))
        assert torch.equal(c, d) and not torch.equal(d, e)


def test_toy_vocab_distillation_drops_tv(tmp_path):
    """A small known answer (V=3, L=3): the distilled one-step generator gets far closer to the target than the
    one-step teacher (the product of the marginals)."""
    main(["--teacher", "toy-vocab", "--vocab", "3", "--length", "3", "--steps", "300", "--batch-size", "128",
          "--mdm-steps", "300", "--eval-n", "8000", "--out", str(tmp_path), "--device", "cpu", "--save-every", "1000"])
    m = json.load(open(tmp_path / "metrics.json"))
    assert m["tv_teacher_1step"] > 0.5
    assert m["tv_generator"] < 0.5 * m["tv_teacher_1step"], m
    assert m["tv_teacher_multistep"] < 0.05


def test_lr_decay_reaches_the_generator_only(tmp_path):
    """--lr-decay 0.5 over 10 steps: the generator's lr is constant up to step 5, then falls linearly to lr / 5 at the
    last step; the auxiliary model's lr stays where it was."""
    main(["--teacher", "toy-vocab", "--vocab", "3", "--length", "2", "--steps", "10", "--batch-size", "8",
          "--mdm-steps", "5", "--eval-n", "100", "--warmup", "0", "--lr", "1e-3", "--lr-aux", "2e-3", "--lr-decay",
          "0.5", "--log-every", "1", "--device", "cpu", "--out", str(tmp_path)])
    lrs = [json.loads(line)["lr"] for line in open(tmp_path / "log.jsonl")]
    assert lrs == pytest.approx([1e-3] * 5 + [1e-3 * k / 5 for k in (5, 4, 3, 2, 1)])
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["opt_aux"]["param_groups"][0]["lr"] == 2e-3


def test_amp_and_compile_paths_run_on_cpu(tmp_path):
    """The CUDA-oriented switches (bf16 autocast, torch.compile) exercised on CPU: a few steps run and match the
    eager float32 run closely at the start."""
    args = ["--teacher", "toy-vocab", "--vocab", "3", "--length", "2", "--steps", "3", "--batch-size", "16",
            "--mdm-steps", "5", "--eval-n", "200", "--device", "cpu", "--log-every", "1"]
    main(args + ["--amp", "--compile", "--out", str(tmp_path / "fast")])
    main(args + ["--out", str(tmp_path / "eager")])
    fast = [json.loads(line) for line in open(tmp_path / "fast" / "log.jsonl")]
    eager = [json.loads(line) for line in open(tmp_path / "eager" / "log.jsonl")]
    assert len(fast) == len(eager) == 3
    assert fast[0]["divergence"] == pytest.approx(eager[0]["divergence"], rel=0.05)


def test_amp_on_a_cpu_without_native_bf16_says_so(monkeypatch, capsys):
    """--amp where bf16 is emulated (11x slower here, docs/speed.md) prints a one-line note; native bf16 and fp32
    do not."""
    for native, amp, noted in ((False, True, True), (True, True, False), (False, False, False)):
        monkeypatch.setattr(config, "cpu_has_bf16", lambda: native)
        rt = config.runtime("cpu", amp=amp)
        err = capsys.readouterr().err
        assert rt.amp == amp and (err.startswith("note: --amp on this CPU emulates bf16") and
                                  err.count("\n") == 1) == noted, (native, amp, err)


def test_aux_loss_is_cross_entropy_on_the_masked_entries_only():
    """The auxiliary model learns p_theta(x0 | x_t) on the entries x_t hides (as the teacher was trained): its loss
    is the label-smoothed cross-entropy over the masked entries, not over all of them."""
    x = torch.randint(0, 8, (6, 16, 2), generator=torch.Generator().manual_seed(0))
    logits = torch.randn(6, 16, 2, 9, generator=torch.Generator().manual_seed(1))
    seen = []

    def aux_call(x_t, labels):                                           # a fixed "model" that records its input
        seen.append(x_t)
        return logits
    loss = aux_loss(aux_call, 8, x, torch.zeros(6, dtype=torch.long), "arccos", 0.1, torch.Generator().manual_seed(2))
    x_t, mask = random_mask(x, 8, "arccos", torch.Generator().manual_seed(2))
    assert torch.equal(seen[0], x_t) and 0 < mask.sum() < mask.numel()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 9), x.reshape(-1), label_smoothing=0.1,
                                           reduction="none").reshape(6, 16, 2)   # [B*N*S] -> [B, N, S]
    torch.testing.assert_close(loss, ce[mask].mean(), rtol=1e-6, atol=0)
    assert abs(loss.item() - ce.mean().item()) > 1e-3, "the all-entries loss would differ"


@pytest.mark.parametrize("flag", [False, True])
def test_teacher_dropout_flag(flag):
    """--teacher-dropout: the teacher's distillation passes run in train mode (dropout on, as the official MaskGIT
    run did); default eval mode.  Either way the teacher is left in eval mode (its samples never drop out)."""
    torch.manual_seed(0)
    teacher = MaskTransformer(img_size=64, hidden_dim=32, codebook_size=16, depth=1, heads=2, mlp_dim=64, nclass=5,
                              dropout=0.5).eval()
    a = SimpleNamespace(schedule="arccos", teacher_cfg=2.0, divergence="fkl", beta=0.0, normalisation="sum",
                        teacher_dropout=flag, train_temperature=1.0)
    run = SimpleNamespace(args=a, teacher=teacher, aux=make_generator(teacher).eval(), rt=runtime("cpu"))
    z = torch.randn(2, 16, 1, 17)

    def divergence():
        run.rng = torch.Generator().manual_seed(0)
        return dimo_loss(run, z, torch.tensor([0, 1]))[1]
    assert (divergence() != divergence()) == flag and not teacher.training


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_training_temperature_is_di_m_o_on_the_logits_z_over_tau(tau):
    """--train-temperature tau: the step at logits z is the paper's step (tau = 1) at the logits z / tau, draw, mask
    and divergence alike, so the loss is the same and its gradient in z is the paper's gradient divided by tau."""
    torch.manual_seed(0)
    teacher = MaskTransformer(img_size=64, hidden_dim=32, codebook_size=16, depth=1, heads=2, mlp_dim=64,
                              nclass=5).eval()
    run = SimpleNamespace(teacher=teacher, aux=make_generator(teacher).eval(), rt=runtime("cpu"))
    z = (torch.randn(3, 16, 1, 17) * 3).requires_grad_(True)
    labels = torch.tensor([0, 1, 2])

    def step(logits, t):
        run.args = SimpleNamespace(schedule="arccos", teacher_cfg=2.0, divergence="fkl", beta=0.0,
                                   normalisation="sum", teacher_dropout=False, train_temperature=t)
        run.rng = torch.Generator().manual_seed(0)
        loss, divergence, x = dimo_loss(run, logits, labels)
        return loss, divergence, x, torch.autograd.grad(loss, z)[0]
    loss_tau, div_tau, x_tau, grad_tau = step(z, tau)
    loss_one, div_one, x_one, grad_one = step(z / tau, 1.0)
    assert torch.equal(x_tau, x_one) and div_tau == div_one
    torch.testing.assert_close(loss_tau, loss_one)
    torch.testing.assert_close(grad_tau, grad_one)            # d/dz of L(z / tau) = (paper's gradient at z / tau) / tau
    x_paper = step(z, 1.0)[2]
    assert not torch.equal(x_paper, x_tau)                    # and it is another draw than the paper's at z


def test_joint_family_covers_what_it_says():
    kinds, floors = set(), set()
    for seed in range(40):
        p, info = family_joint(seed)
        assert p.shape == (info["vocab"],) * info["length"] and 3 <= info["vocab"] <= 6 and 3 <= info["length"] <= 5
        assert abs(p.sum() - 1) < 1e-9 and p.min() >= info["floor"] / p.size * (1 - 1e-9)
        kinds.add(info["kind"].split()[0] if info["kind"].startswith("markov") else "mixture")
        floors.add(info["floor"] > 0)
        if info["kind"][0].isdigit():                                  # "<modes> modes s=<sharpness>"
            assert 4 <= int(info["kind"].split()[0]) <= 10 and 0.7 <= float(info["kind"].split("=")[1]) <= 0.95
    assert kinds == {"markov", "mixture"} and floors == {True, False}


def test_markov_joint_is_a_chain():
    """x_3 depends on x_1, x_2 only through x_2: p(x3 | x1, x2) is the same for every x1."""
    p = markov_joint(4, 3, seed=0, sharpness=0.8)
    cond = p / p.sum(-1, keepdims=True)                                 # p(x3 | x1, x2)
    assert np.allclose(cond, cond[:1]) and abs(p.sum() - 1) < 1e-12
    assert not np.allclose(cond[0], cond[0, :1]), "x_3 does depend on x_2"
