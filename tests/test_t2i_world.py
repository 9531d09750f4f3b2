"""The toy text-to-image world: scenes, captions and held-out compositions, GenEval's metadata and scoring rules on
hand-made cases, the detector on renders (right and deliberately wrong), the BPE learner, the trainers' folder, the
bundled world from the command line, bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import geneval_rules as rules
import geneval_toy as gt
import scenes
from config import PRESETS, UserError
from teacher import load_meissonic, main_sample
from text_encoder import EOS, CLIPTokenizer
from train_t2i import (background_patches, code_bits_per_patch, codes_to_restart, entropy_bits, learn_bpe,
                       patch_contents, train_vq_dictionary)
from vq_model import VQModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = PRESETS["meissonic-toy"]["bundled"]["folder"]


# ----------------------------------------------------------------------------------------------------------------
# Scenes and captions.
# ----------------------------------------------------------------------------------------------------------------
def test_scenes_are_deterministic_in_the_seed():
    a, caps_a, _ = scenes.training_batch(6, seed=3)
    b, caps_b, _ = scenes.training_batch(6, seed=3)
    c, caps_c, _ = scenes.training_batch(6, seed=4)
    assert torch.equal(a, b) and caps_a == caps_b
    assert not torch.equal(a, c)
    assert a.shape == (6, 3, scenes.SIZE, scenes.SIZE) and a.min() >= 0 and a.max() <= 1


def test_training_never_holds_a_held_out_composition():
    images, captions, specs = scenes.training_batch(60, seed=0)
    assert not any(scenes.is_held_out(s) for s in specs)
    for colour, shape in scenes.HELD_OUT_COLOURED:
        assert not any(f"{colour} {shape}" in c for c in captions)
    for found in rules.detect(images):                                      # in the images too
        assert not any((o[2], shape) in scenes.HELD_OUT_COLOURED for shape, objs in found.items() for o in objs)
        assert not any((shape, len(objs)) in scenes.HELD_OUT_COUNTS for shape, objs in found.items())


def test_objects_sit_on_the_token_lattice_and_never_share_a_token():
    _, _, specs = scenes.training_batch(40, seed=1)
    rng = np.random.default_rng(1)
    for spec in specs:
        scene = scenes.scene_for(spec, rng)
        owner = np.full((scenes.SIZE // 4, scenes.SIZE // 4), -1)                  # which object each token shows
        for i, obj in enumerate(scene):
            assert obj[2] % 4 == 0 and obj[3] % 4 == 0 and obj[4] == scenes.RADIUS    # the VQ model's 4 x 4 tokens
            drawn = np.abs(scenes.render([obj]) - scenes.render([])).sum(0) > 0   # [H, W]
            tokens = drawn.reshape(scenes.SIZE // 4, 4, scenes.SIZE // 4, 4).any((1, 3))   # [h, w]
            assert (owner[tokens] == -1).all(), f"two objects in one token: {scene}"
            owner[tokens] = i
    a = scenes.render([("triangle", "red", 12.0, 16.0, scenes.RADIUS)])
    b = scenes.render([("triangle", "red", 28.0, 24.0, scenes.RADIUS)])
    assert np.array_equal(a[:, 4:28, 0:24], b[:, 12:36, 16:40])                     # same pixels, moved by tokens


def test_a_positioned_scene_has_its_relation_alone_under_genevals_rule():
    rng = np.random.default_rng(0)
    spec = dict(include=[{"class": "square", "count": 1, "color": "blue"},
                         {"class": "circle", "count": 2, "color": "red", "position": ["left of", 0]}])
    for _ in range(20):
        scene = scenes.scene_for(spec, rng)
        target = scene[0]
        assert [o[:2] for o in scene] == [("square", "blue"), ("circle", "red"), ("circle", "red")]
        for obj in scene[1:]:
            assert scenes.relative_position(scenes.box_of(obj), scenes.box_of(target)) == {"left of"}


def test_relative_position_follows_genevals_rule():
    b = (20, 20, 30, 30)
    assert scenes.relative_position((0, 20, 10, 30), b) == {"left of"}
    assert scenes.relative_position((20, 0, 30, 10), b) == {"above"}
    assert scenes.relative_position((0, 0, 10, 10), b) == {"left of", "above"}      # diagonal: both (0.707 > 0.5)
    assert scenes.relative_position((21, 20, 31, 30), b) == set()                    # within the 0.1 x sizes slack
    assert scenes.relative_position((25, 20, 35, 30), b) == {"right of"}              # 5 - 2 = 3 of 5: 0.6


def test_genevals_wording_and_metadata_format():
    meta = scenes.geneval_metadata()
    prompts = {m["prompt"]: m for m in meta}
    assert {m["tag"] for m in meta} == set(scenes.TASKS)
    assert prompts["a photo of an orange circle"]["include"] == [{"class": "circle", "count": 1, "color": "orange"}]
    three = prompts["a photo of three pluses"]
    assert three["include"] == [{"class": "plus", "count": 3}] and three["exclude"] == [{"class": "plus", "count": 4}]
    pos = prompts["a photo of a circle left of a square"]
    assert pos["include"] == [{"class": "square", "count": 1}, {"class": "circle", "count": 1,
                                                                 "position": ["left of", 0]}]
    assert prompts["a photo of four circles"]["split"] == "held-out"
    assert prompts["a photo of a purple triangle"]["split"] == "held-out"
    assert prompts["a photo of a red triangle"]["split"] == "seen"
    assert all(g.get("color") != h.get("color") for m in meta if m["tag"] == "color_attr" for g, h in
               [m["include"]])


# ----------------------------------------------------------------------------------------------------------------
# GenEval's rules on hand-made detections.
# ----------------------------------------------------------------------------------------------------------------
def det(box, colour="red", conf=0.9):
    return (box, conf, colour)


def test_counting_is_exact_through_the_exclude_clause():
    meta = dict(tag="counting", include=[{"class": "circle", "count": 2}], exclude=[{"class": "circle", "count": 3}])
    two = {"circle": [det((0, 0, 5, 5)), det((10, 0, 15, 5))]}
    assert rules.evaluate(two, meta)[0]
    assert not rules.evaluate({"circle": two["circle"][:1]}, meta)[0]
    three = {"circle": two["circle"] + [det((20, 0, 25, 5))]}
    ok, reason = rules.evaluate(three, meta)
    assert not ok and "circle<3" in reason


def test_colour_is_checked_on_the_most_confident_detections():
    meta = dict(tag="colors", include=[{"class": "square", "count": 1, "color": "blue"}])
    assert rules.evaluate({"square": [det((0, 0, 5, 5), "blue", 0.9), det((9, 0, 14, 5), "red", 0.8)]}, meta)[0]
    assert not rules.evaluate({"square": [det((0, 0, 5, 5), "red", 0.9), det((9, 0, 14, 5), "blue", 0.8)]}, meta)[0]


def test_position_needs_the_relation_against_the_target_group():
    meta = dict(tag="position", include=[{"class": "square", "count": 1},
                                         {"class": "circle", "count": 1, "position": ["left of", 0]}])
    square = {"square": [det((30, 10, 40, 20))]}
    assert rules.evaluate({**square, "circle": [det((0, 10, 10, 20))]}, meta)[0]
    ok, reason = rules.evaluate({**square, "circle": [det((40, 10, 50, 20))]}, meta)
    assert not ok and "right of" in reason
    ok, reason = rules.evaluate({"circle": [det((0, 10, 10, 20))]}, meta)
    assert not ok and "no target" in reason


# ----------------------------------------------------------------------------------------------------------------
# The detector on renders.
# ----------------------------------------------------------------------------------------------------------------
def test_the_detector_passes_ground_truth_and_fails_deliberate_errors():
    rng = np.random.default_rng(1)
    meta = scenes.geneval_metadata()
    picks = [m for t in scenes.TASKS for m in [r for r in meta if r["tag"] == t][:3]]
    truth = rules.score_images(scenes.render_batch([scenes.scene_for(m, rng) for m in picks]), picks)
    wrong = rules.score_images(scenes.render_batch([scenes.scene_for(rules.wrong_spec(m, rng), rng) for m in picks]),
                               picks)
    assert all(r[0] for r in truth), [(m["prompt"], r[1]) for m, r in zip(picks, truth) if not r[0]]
    assert not any(r[0] for r in wrong), [m["prompt"] for m, r in zip(picks, wrong) if r[0]]


def test_the_detector_finds_no_objects_in_noise():
    vq = load_meissonic(BUNDLED, scenes.SIZE, verbose=False)[1]
    assert rules.noise_floor(vq, repeats=1)["all"]["overall"] < 0.1   # 0.28 without the size rule and MIN_AREA


def test_the_detector_reads_blended_edges_as_their_own_colour():
    image = torch.tensor(scenes.render([("triangle", "yellow", 20.0, 20.0, scenes.RADIUS)]))[None]
    found = rules.detect(image)[0]
    assert list(found) == ["triangle"] and found["triangle"][0][2] == "yellow"       # no orange rim


# ----------------------------------------------------------------------------------------------------------------
# The BPE vocabulary and the unknown-word note.
# ----------------------------------------------------------------------------------------------------------------
def test_learned_bpe_makes_every_caption_word_one_symbol_and_falls_back_to_bytes():
    captions = ["a photo of two red circles left of a blue square", "there are three purple pluses"]
    vocab, merges = learn_bpe(captions)
    assert merges.startswith("#version") and len(vocab) == 512 + len(merges.splitlines()) - 1 + 2
    tok = CLIPTokenizer(vocab, merges, EOS, 32)
    assert tok.tokenize(captions[0]) == [w + "</w>" for w in captions[0].split()]
    assert tok.tokenize("dog") == ["d", "o", "g</w>"]                                # bytes: still encodes
    ids = tok(["a dog"])
    assert ids.shape == (1, 32) and ids[0, 0] == vocab["<|startoftext|>"]


def test_unknown_words_are_named_from_the_worlds_captions(tmp_path):
    vocab, merges = learn_bpe(["a red circle"])
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text(merges)
    tok = CLIPTokenizer.from_folder(str(tmp_path))
    assert tok.unknown_words("a red dog") == []                                      # no captions.txt: nothing known
    (tmp_path / "captions.txt").write_text("a red circle\n")
    tok = CLIPTokenizer.from_folder(str(tmp_path))
    assert tok.unknown_words("a red dog on a circle") == ["dog", "on"]


# ----------------------------------------------------------------------------------------------------------------
# The trainers write a folder that loads; the bundled world from the command line.
# ----------------------------------------------------------------------------------------------------------------
def test_the_three_stages_write_a_meissonic_folder_that_loads_strictly(tmp_path, monkeypatch):
    import train
    out = str(tmp_path / "world")
    for stage in ("vq", "text", "t2i"):
        extra = ["--dictionary-steps", "2"] if stage == "vq" else []
        train.main([stage, "--out", out, "--steps", "2", "--scenes", "40", "--batch-size", "4", "--warmup", "1",
                    *extra])
    model, vq, tok, enc = load_meissonic(out, 48, verbose=False)
    assert model.token_grid == (12, 12) and vq.factor == 4 and tok.known
    for sub in ("vqvae", "text_encoder", "transformer"):
        with open(os.path.join(out, sub, "training.json")) as f:
            assert json.load(f)["steps"] == 2


def test_plain_patches_keep_one_code_at_a_restart():
    image = torch.from_numpy(scenes.render([("square", "red", 10.0, 10.0, 6.0)]))[None]   # pixels 4-15 red
    plain = background_patches(image, 4).view(12, 12)                           # [144] -> [12, 12]
    assert plain.sum() == 144 - 9 and not plain[1:4, 1:4].any()
    usage = torch.tensor([0., 10, 8, 6, 5, 4])
    plain_usage = torch.tensor([0., 1, 8, 5, 2, 3])                              # codes 2, 3, 5: mostly plain
    assert codes_to_restart(usage, plain_usage).tolist() == [0, 3, 5]           # unused, and plain but code 2
    assert codes_to_restart(usage).tolist() == [0]                               # the rule off: unused only


def tiled(n, kinds, seed, side=12):
    """n images of side x side patches of 4 x 4 pixels, each patch one of ``kinds`` flat grey levels at random."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.randint(kinds, (n, side, side), generator=g)
    levels = torch.linspace(0.1, 0.9, kinds)
    return levels[grid].repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1).expand(-1, 3, -1, -1), grid


def test_patch_contents_and_code_bits_on_hand_made_cases():
    images, grid = tiled(3, 3, seed=0)
    contents, which = patch_contents(images, 4)
    assert len(contents) == 3 and torch.equal(which, grid.flatten())              # levels are sorted, so are contents
    content = torch.tensor([0, 0, 1, 1])
    assert code_bits_per_patch(torch.tensor([5, 5, 7, 7]), content) == 0.0
    assert code_bits_per_patch(torch.tensor([5, 6, 7, 7]), content) == 0.5       # one of two patches a coin toss


def test_the_dictionary_stage_gives_each_patch_one_code_whatever_surrounds_it():
    torch.manual_seed(0)
    vq = VQModel(block_out_channels=[8, 8, 8], down_block_types=["DownEncoderBlock2D"] * 3,
                 up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=1, latent_channels=4,
                 num_vq_embeddings=6, norm_num_groups=4, mid_block_add_attention=False, lookup_from_codebook=True)
    images, grid = tiled(64, 4, seed=1, side=4)
    test_images, test_grid = tiled(16, 4, seed=2, side=4)                        # the same patches, other contexts
    with torch.no_grad():
        before = vq.encode(test_images)[1].flatten()
    train_vq_dictionary(vq, images, 100, 16, 1e-2, 5, torch.Generator().manual_seed(0), progress=False)
    vq.eval()
    with torch.no_grad():
        ids = vq.encode(test_images)[1].flatten()
    assert code_bits_per_patch(ids, test_grid.flatten()) == 0.0 and len(ids.unique()) == 4  # a code each, none shared
    assert code_bits_per_patch(before, test_grid.flatten()) > 0 or len(before.unique()) < 4    # which it was not
    with pytest.raises(UserError, match="distinct patches but the VQ model has 6 codes: raise num_vq_embeddings"):
        train_vq_dictionary(vq, tiled(4, 7, seed=3, side=4)[0], 1, 4, 1e-3, 1, torch.Generator(), progress=False)


@pytest.mark.skipif(not os.path.isdir(BUNDLED), reason="the bundled toy world is not in assets/")
def test_token_report_reads_the_ids_the_teacher_must_predict():
    assert entropy_bits(torch.tensor([4, 4, 9, 9])) == 1.0 and entropy_bits(torch.tensor([3, 3, 3])) == 0.0
    t2i = gt.T2I("meissonic", None)
    metas = scenes.geneval_metadata()[:3]
    renders = scenes.render_batch([scenes.scene_for(m, np.random.default_rng(0)) for m in metas])
    ids = t2i.vq.encode(renders)[1]
    report = gt.token_report(t2i, renders, ids, [m["prompt"] for m in metas], 0, ratios=(0.5,))
    assert report["plain_share"] == round(background_patches(renders, 4).float().mean().item(), 3)
    assert 0 <= report["plain_code_bits"] <= 8 and 0 <= report["ce_plain@0.5"] < report["ce_object@0.5"]
    assert report["code_bits_per_patch"] == round(code_bits_per_patch(ids.flatten(), patch_contents(renders, 4)[1]), 3)
    assert report["ce_object_empty@0.5"] != report["ce_object@0.5"]          # the empty prompt is another condition


@pytest.mark.skipif(not os.path.isdir(BUNDLED), reason="the bundled toy world is not in assets/")
def test_second_code_report_changes_object_ids_alone(monkeypatch):
    t2i = gt.T2I("meissonic", None)
    metas = [m for m in scenes.geneval_metadata() if m["split"] == "seen"][:3]
    renders = scenes.render_batch([scenes.scene_for(m, np.random.default_rng(0)) for m in metas])
    latents, ids = t2i.vq.encode(renders)
    decoded, decode = [], t2i.vq.decode
    monkeypatch.setattr(t2i.vq, "decode", lambda i: decoded.append(i) or decode(i))
    report = gt.second_code_report(t2i.vq, renders, latents, ids, metas, 0, shares=(1.0,))
    objects = ~background_patches(renders, 4).view_as(ids)
    assert torch.equal(decoded[0], ids) and torch.equal(decoded[1][~objects], ids[~objects])
    assert (decoded[1][objects] != ids[objects]).all() and report["far"] >= 1
    assert report["object_share"] == round(objects.float().mean().item(), 3) and set(report) == {
        "object_share", "far", "seen_overall@0.0", "seen_overall@1.0"}


def test_t2i_without_its_text_side_is_one_line(tmp_path):
    import train
    with pytest.raises(UserError, match="run python train.py vq"):
        train.main(["t2i", "--out", str(tmp_path), "--steps", "1"])


@pytest.mark.skipif(not os.path.isdir(BUNDLED), reason="the bundled toy world is not in assets/")
def test_teacher_sample_meissonic_works_out_of_the_box(tmp_path):
    out = str(tmp_path / "grid.png")
    r = subprocess.run([sys.executable, "teacher.py", "sample", "--teacher", "meissonic", "--prompt",
                        "two red circles left of a blue square", "--steps", "4", "--out", out],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "bundled toy world" in r.stdout and os.path.isfile(out)
    with open(out.replace(".png", ".json")) as f:
        assert json.load(f)["teacher"] == "meissonic-toy"


@pytest.mark.skipif(not os.path.isdir(BUNDLED), reason="the bundled toy world is not in assets/")
@pytest.mark.parametrize("prompt, steps, message", [
    ("   ", "4", "a prompt is empty"),
    ("a red circle", "0", "--steps = 0 is out of range"),
])
def test_bad_text_to_image_input_is_one_line(tmp_path, prompt, steps, message):
    with pytest.raises(UserError, match=message):
        main_sample(["--teacher", "meissonic", "--prompt", prompt, "--steps", steps, "--out", str(tmp_path / "g.png")])


@pytest.mark.skipif(not os.path.isdir(BUNDLED), reason="the bundled toy world is not in assets/")
def test_a_toy_folder_under_the_released_preset_is_one_line():
    with pytest.raises(UserError, match="samples at 1024 px: for a toy-world folder pass --teacher meissonic-toy"):
        gt.main(["tokenizer", "--teacher", "meissonic", "--teacher-ckpt", BUNDLED])


@pytest.mark.skipif(not os.path.isdir(BUNDLED), reason="the bundled toy world is not in assets/")
def test_unknown_words_still_sample_and_are_said_once(tmp_path, capsys):
    main_sample(["--teacher", "meissonic", "--prompt", "a red dog", "--prompt", "a blue dog", "--steps", "2",
                 "--out", str(tmp_path / "g.png")])
    out = capsys.readouterr().out
    assert out.count("never seen") == 1 and "'dog'" in out and os.path.isfile(tmp_path / "g.png")


def test_geneval_folder_layout(tmp_path):
    metas = scenes.geneval_metadata()[:2]
    images = torch.rand(4, 3, 48, 48)
    gt.write_geneval_folder(str(tmp_path), metas, images, 2)
    for i, m in enumerate(metas):
        folder = tmp_path / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == m
        assert sorted(os.listdir(folder / "samples")) == ["0000.png", "0001.png"] and (folder / "grid.png").exists()
