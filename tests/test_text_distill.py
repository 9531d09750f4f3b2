"""Di[M]O on a text-to-image teacher (text_task.py): the prompt reaches every network as the paper has it (the teacher
guided against the negative prompt, the auxiliary model unguided), the sigma perturbation sits on embed's output,
the frozen layers stay, a toy-size run end to end with a bitwise resume, bad input."""
import json
import os

import pytest
import torch

import distill
from checkpoints import load_checkpoint
from config import PRESETS, UserError
from generator import generator_logits, main_sample, token_init
from teacher import load_meissonic
from text_task import PromptPool, read_prompts

BUNDLED = PRESETS["meissonic-toy"]["bundled"]["folder"]
SMALL = ["--teacher", "meissonic", "--batch-size", "2", "--eval-n", "6", "--tune-temperature", "", "--lr-decay",
         "0", "--device", "cpu"]


def setup(tmp_path, *extra):
    a = distill.build_parser().parse_args(SMALL + ["--steps", "2", "--out", str(tmp_path / "run"), *extra])
    return distill.setup_run(a)[0]


def test_the_prompt_reaches_teacher_with_the_negative_prompt_and_the_auxiliary_model_unguided(tmp_path):
    run = setup(tmp_path, "--negative-prompt", "a purple plus")
    calls = {}

    def spy(name, model):
        original = model.logits

        def logits(tokens, cond, drop_label=None):
            calls[name] = (cond, drop_label)
            return original(tokens, cond, drop_label)
        model.logits = logits
    spy("teacher", run.teacher)
    spy("aux", run.aux)
    torch.manual_seed(0)
    labels = run.draw_labels(2, run.rng)
    x_init = token_init(run.gen, 2, 0.5, run.rng)
    z = run.gen_call(labels, x_init, 0.3, run.rng)
    distill.dimo_loss(run, z, labels)
    cond, drop = calls["teacher"]
    assert drop.tolist() == [False, False, True, True]                  # one batched pass: prompt, then negative
    neg = run.task.pool.condition(["a purple plus"])
    assert torch.equal(cond.hidden[:2], labels.hidden)
    assert torch.equal(cond.neg_hidden[2:], neg.hidden.expand(2, -1, -1))
    assert cond.timestep is None and not cond.counter                  # timestep 0 for every network
    aux_cond, aux_drop = calls["aux"]
    assert aux_drop is None and torch.equal(aux_cond.pooled, labels.pooled)   # the auxiliary model: no guidance
    assert run.args.teacher_cfg == 2.0 and run.args.schedule == "cosine" and run.args.r_init == 0.5


def test_sigma_perturbs_the_output_of_embed_as_the_official_variant(tmp_path):
    run = setup(tmp_path)
    model, sigma = run.teacher, 0.3
    labels = run.draw_labels(2, run.rng)
    x_init = token_init(model, 2, 0.5, torch.Generator().manual_seed(1))
    ours = generator_logits(model, labels, x_init, sigma, torch.Generator().manual_seed(2))
    ids = x_init.reshape(2, *model.token_grid)                         # [B, N, 1] -> [B, h, w]
    eps = torch.randn(2, model.embed.conv.out_channels, *model.token_grid, generator=torch.Generator().manual_seed(2))
    official = model(ids, labels.hidden, labels.pooled, labels.micro_conds, None, noise_emb_perturb=sigma, noise=eps)
    official = official.reshape(2, model.codebook_size, -1).permute(0, 2, 1)[:, :, None]  # [B, K, h, w] -> [B, N, 1, K]
    assert (ours - official).abs().max() < 1e-4             # float32 rounding (logits of size 10); wrong place: ~1
    assert not torch.allclose(ours, generator_logits(model, labels, x_init, 0.0), atol=1e-3)


def test_a_toy_run_ends_with_scores_keeps_frozen_layers_and_resumes_bitwise(tmp_path):
    common = SMALL + ["--save-every", "2"]
    distill.main(common + ["--steps", "4", "--out", str(tmp_path / "straight")])
    distill.main(common + ["--steps", "2", "--out", str(tmp_path / "split")])
    distill.main(["--resume", str(tmp_path / "split"), "--steps", "4"])
    a, b = (load_checkpoint(str(tmp_path / d / "checkpoint.pt")) for d in ("straight", "split"))
    assert a["step"] == b["step"] == 4
    for key in ("generator", "ema", "aux"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    teacher = load_meissonic(BUNDLED, 48, verbose=False)[0].state_dict()
    for key in ("generator", "aux"):
        for name, value in a[key].items():
            frozen = name.split(".")[0] in ("embed", "mlm_layer")
            assert torch.equal(value, teacher[name]) == frozen, f"{key}.{name}: frozen {frozen}"
    m = json.load(open(tmp_path / "straight" / "metrics.json"))
    for name in ("generator", "teacher", "teacher_1step"):
        assert 0 <= m[name]["seen"]["overall"] <= 1 and m[name]["fid"] > 0 and m[name]["clip_score"] >= 0
    assert os.path.isfile(tmp_path / "straight" / "samples.png")
    out = str(tmp_path / "grid.png")                                    # generator.py sample --run ... --prompt
    main_sample(["--run", str(tmp_path / "straight"), "--prompt", "a red circle", "--prompt", "two blue squares",
                 "--n", "3", "--out", out])
    shown = json.load(open(out[:-4] + ".json"))
    assert shown["labels"] == ["a red circle", "two blue squares", "a red circle"] and os.path.isfile(out)
    with pytest.raises(UserError, match="--prompt"):
        main_sample(["--run", str(tmp_path / "straight"), "--labels", "1", "--out", out])


def test_prompt_files_bad_input(tmp_path):
    (tmp_path / "ok.txt").write_text("a red circle\n\n  two blue squares  \n")
    assert read_prompts(str(tmp_path / "ok.txt")) == ["a red circle", "two blue squares"]
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    for name, words in (("empty.txt", "holds no prompt"), ("binary.txt", "is binary"), ("latin.txt", "not UTF-8"),
                        ("missing.txt", "does not exist")):
        with pytest.raises(UserError, match=words):
            read_prompts(str(tmp_path / name))


def test_a_class_to_image_checkpoint_is_refused_for_a_text_teacher(tmp_path):
    (tmp_path / "teacher.pt").write_bytes(b"0" * 16)
    with pytest.raises(UserError, match="not a file"):
        distill.main(SMALL + ["--teacher-ckpt", str(tmp_path / "teacher.pt"), "--out", str(tmp_path / "r")])


def test_an_over_long_prompt_is_cut_and_said_once(tmp_path, capsys):
    run = setup(tmp_path)
    pool = PromptPool(["a red circle " * 40] * 3, run.task.tok, run.task.enc, "", [48.0, 48, 0, 0, 6], "cpu")
    cond = pool.condition(pool.prompts)
    cond = pool.condition(pool.prompts)
    assert cond.hidden.shape[1] == run.task.tok.max_length
    assert capsys.readouterr().out.count("truncated") == 1
