"""Meissonic's text side, loading path and sampler on tiny random models: a released-layout folder written here
(config.json + .safetensors per subfolder, the golden CLIP tokenizer files), loaded strictly; the sampler's counts,
the negative prompt as CFG's unconditional branch, guidance 1, the pipeline's timesteps; bad input."""
import json
import math
import os
import shutil

import pytest
import torch

import teacher as teacher_mod
from checkpoints import read_safetensors, write_safetensors
from config import UserError
from masking import guided_logits
from meissonic import MeissonicTransformer, TextCondition
from teacher import load_meissonic, micro_conds, prompt_condition, sample
from text_encoder import CLIPTextEncoder, CLIPTokenizer
from vq_model import VQModel

GOLDEN_TOKENIZER = os.path.join(os.path.dirname(__file__), "golden", "clip_tokenizer")
TINY = dict(
    transformer=dict(_class_name="Transformer2DModel", num_layers=1, num_single_layers=1, attention_head_dim=8,
                     num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
                     axes_dims_rope=[2, 2, 4], vocab_size=40, codebook_size=32, downsample=True, upsample=True,
                     patch_size=1, in_channels=64, guidance_embeds=False),
    vqvae=dict(_class_name="VQModel", in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
               up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], layers_per_block=1, act_fn="silu",
               latent_channels=4, num_vq_embeddings=32, norm_num_groups=4, vq_embed_dim=None, norm_type="group",
               mid_block_add_attention=False, lookup_from_codebook=True, sample_size=16, scaling_factor=0.18215),
    text_encoder=dict(vocab_size=714, hidden_size=16, intermediate_size=32, projection_dim=16, num_hidden_layers=2,
                      num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
                      bos_token_id=712, eos_token_id=713, pad_token_id=713))
BUILD = dict(transformer=MeissonicTransformer, vqvae=VQModel, text_encoder=CLIPTextEncoder)
WEIGHTS = dict(transformer="diffusion_pytorch_model.safetensors", vqvae="diffusion_pytorch_model.safetensors",
               text_encoder="model.safetensors")


def write_tiny_meissonic(folder, seed=0):
    """A random tiny Meissonic in the released folder layout (what --teacher-ckpt reads)."""
    torch.manual_seed(seed)
    for sub, config in TINY.items():
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        model = BUILD[sub](**{k: v for k, v in config.items() if not k.startswith("_") and k not in
                              ("sample_size", "scaling_factor", "pad_token_id")})
        with open(os.path.join(folder, sub, "config.json"), "w") as f:
            json.dump(config, f)
        state = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
        write_safetensors(state, os.path.join(folder, sub, WEIGHTS[sub]))
    shutil.copytree(GOLDEN_TOKENIZER, os.path.join(folder, "tokenizer"))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_meissonic(str(tmp_path_factory.mktemp("meissonic")))


@pytest.fixture(scope="module")
def loaded(tiny):
    return load_meissonic(tiny, 32, verbose=False)      # 32 px / VQ factor 2 = 16 x 16 tokens, 8 x 8 inside


def condition(loaded, prompts, negative="", counter=True):
    _, _, tok, enc = loaded
    return prompt_condition(tok, enc, prompts, negative, micro_conds(32, 6.0), counter)


# ----------------------------------------------------------------------------------------------------------------
# Files: .safetensors, folders, strict loading.
# ----------------------------------------------------------------------------------------------------------------
def test_safetensors_round_trip_every_dtype(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(2).half(), "c": torch.randn(5).bfloat16(),
               "d": torch.arange(6).reshape(2, 3), "e": torch.tensor([True, False]), "f": torch.zeros(0)}
    write_safetensors(tensors, str(tmp_path / "x.safetensors"))
    back = read_safetensors(str(tmp_path / "x.safetensors"))
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def test_truncated_or_corrupt_safetensors_is_one_line(tmp_path):
    path = str(tmp_path / "x.safetensors")
    write_safetensors({"w": torch.randn(64, 64)}, path)
    data = open(path, "rb").read()
    for name, blob in (("truncated", data[:-100]), ("header cut", data[:20]), ("not json", data[:8] + b"{x" +
                                                                                 data[10:])):
        with open(path, "wb") as f:
            f.write(blob)
        with pytest.raises(UserError) as e:
            read_safetensors(path)
        assert "\n" not in str(e.value) and ("truncated" in str(e.value) or "corrupted" in str(e.value)), name


def test_tiny_folder_loads_strictly(tiny, loaded):
    transformer, vq, tok, enc = loaded
    for sub, model in (("transformer", transformer), ("vqvae", vq), ("text_encoder", enc)):
        saved = read_safetensors(os.path.join(tiny, sub, WEIGHTS[sub]))
        assert set(saved) == set(model.state_dict())
        assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert transformer.token_grid == (16, 16) and transformer.mask_id == 39 and tok.pad == "<|endoftext|>"


def test_config_that_does_not_match_its_weights(tiny, tmp_path):
    bad = str(tmp_path / "bad")
    shutil.copytree(tiny, bad)
    config = dict(TINY["transformer"], num_single_layers=2)
    with open(os.path.join(bad, "transformer", "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(UserError, match="missing.*single_transformer_blocks.1.*config.json does not describe"):
        load_meissonic(bad, 32, verbose=False)


def test_wrong_family_and_missing_pieces(tiny, tmp_path):
    with pytest.raises(UserError, match="takes a weights file"):
        teacher_mod.load_pair("maskbit", tiny, tiny)                   # a text-to-image folder for a class preset
    with pytest.raises(UserError, match="is text-to-image"):
        teacher_mod.load_pair("meissonic")
    with pytest.raises(UserError, match="released folder .* not a file"):
        load_meissonic(os.path.join(tiny, "transformer", WEIGHTS["transformer"]), 32)
    other = str(tmp_path / "other")
    shutil.copytree(tiny, other)
    with open(os.path.join(other, "transformer", "config.json"), "w") as f:
        json.dump(dict(hidden_size=16, num_hidden_layers=1), f)      # e.g. a MaskGen / CLIP config
    with pytest.raises(UserError, match="not a Meissonic transformer"):
        load_meissonic(other, 32)
    os.remove(os.path.join(other, "tokenizer", "merges.txt"))
    with pytest.raises(UserError, match="no merges.txt"):
        CLIPTokenizer.from_folder(os.path.join(other, "tokenizer"))
    shutil.rmtree(os.path.join(other, "vqvae"))
    with pytest.raises(UserError, match="no vqvae/"):
        load_meissonic(other, 32)
    with pytest.raises(UserError, match="multiple of 4"):
        load_meissonic(tiny, 34)


# ----------------------------------------------------------------------------------------------------------------
# The tokenizer on prompts: truncation said once, any character encodes.
# ----------------------------------------------------------------------------------------------------------------
def test_long_prompt_truncated_as_clip_and_said_once(capsys):
    tok = CLIPTokenizer.from_folder(GOLDEN_TOKENIZER)
    long = " ".join(["red circle"] * 60)
    ids = tok([long, long, "a red circle"])
    assert ids.shape == (3, 77) and ids[0, -1] == tok.eos and ids[0, 0] == tok.bos
    assert torch.equal(ids[0, 1:76], torch.tensor(tok.encode(long)[1:76]))
    assert capsys.readouterr().out.count("truncated") == 1


def test_unknown_characters_fall_back_to_bytes():
    tok = CLIPTokenizer.from_folder(GOLDEN_TOKENIZER)
    for text in ("一只猫 🐱 on a mat", "naïve café ☃", "\u200b\x07"):
        ids = tok.encode(text)
        assert all(0 <= i < len(tok.vocab) for i in ids) and ids[0] == tok.bos and ids[-1] == tok.eos
    # a character outside the toy merges is spelled by its UTF-8 byte symbols (here 3 bytes: one piece)
    assert tok.tokenize("☃") == ["â", "ĺ", "ĥ</w>"]


# ----------------------------------------------------------------------------------------------------------------
# The sampler.
# ----------------------------------------------------------------------------------------------------------------
def test_counts_follow_the_cosine_schedule_exactly(loaded):
    transformer = loaded[0]
    cond = condition(loaded, ["a red circle", "two blue squares"])
    trace, steps, m = [], 6, 256
    sample(transformer, cond, steps, schedule="cosine", randomize_temperature=2.0, noise_anneal="halton",
           guidance=3.0, generator=torch.Generator().manual_seed(0), trace=trace)
    left = m
    for i, (_, masked) in enumerate(trace):
        # the official scheduler in float32: ratio = (step_idx + 1) / N from an int tensor, cos, times seq_len,
        # floor (at i = 3 of 6 that is 127, not the exact 128)
        ratio = (torch.tensor(i) + 1) / steps
        want = min(max(1, int((m * torch.cos(ratio * math.pi / 2)).floor())), left - 1)
        assert masked.flatten(1).sum(1).tolist() == [want, want], f"step {i}"
        left = want
    assert len(trace) == steps - 1


def test_negative_prompt_is_the_unconditional_branch_and_guidance_1_the_conditional_model(loaded):
    transformer = loaded[0]
    cond = condition(loaded, ["a red circle", "a green ring"], negative="blurry")
    tokens = torch.randint(0, 32, (2, 256, 1))
    tokens[:, ::3] = transformer.mask_id
    with torch.no_grad():
        z_c = transformer.logits(tokens, cond)
        neg_only = cond._replace(hidden=cond.neg_hidden, pooled=cond.neg_pooled)
        z_u = transformer.logits(tokens, neg_only)
        torch.testing.assert_close(guided_logits(transformer, tokens, cond, 4.0), z_u + 4.0 * (z_c - z_u))
        assert torch.equal(guided_logits(transformer, tokens, cond, 1.0), z_c)
    assert not torch.allclose(z_c, z_u), "the negative prompt must change the logits"
    # at guidance 1 the negative prompt is never read: any other one samples the same tokens
    other = condition(loaded, ["a red circle", "a green ring"], negative="something else entirely")
    runs = [sample(transformer, c, 4, schedule="cosine", guidance=1.0, generator=torch.Generator().manual_seed(1))
            for c in (cond, other)]
    assert torch.equal(*runs)
    runs = [sample(transformer, c, 4, schedule="cosine", guidance=3.0, generator=torch.Generator().manual_seed(1))
            for c in (cond, other)]
    assert not torch.equal(*runs)


def test_the_sampler_passes_the_pipelines_step_counter(loaded, monkeypatch):
    transformer, seen = loaded[0], []
    forward = transformer.forward_embedded                             # (x, hidden, pooled, micro, timestep)

    def spy(*args, **kwargs):
        seen.append(args[4][0].item() if args[4] is not None else None)
        return forward(*args, **kwargs)
    monkeypatch.setattr(transformer, "forward_embedded", spy)
    for counter, want in ((True, [4.0, 3.0, 2.0, 1.0, 0.0]), (False, [None] * 5)):
        seen.clear()
        sample(transformer, condition(loaded, ["a plus"], counter=counter), 5, schedule="cosine", guidance=2.0,
               generator=torch.Generator().manual_seed(0))
        assert seen == want


def test_text_condition_select_and_twice():
    b = 3
    cond = TextCondition(torch.zeros(b, 4, 2), torch.zeros(b, 2), torch.ones(b, 4, 2), torch.ones(b, 2),
                         torch.zeros(b, 5), None, True)
    hidden, pooled, _, _ = cond.select(torch.tensor([False, True, False]))
    assert hidden[:, 0, 0].tolist() == [0, 1, 0] and pooled[:, 0].tolist() == [0, 1, 0]
    assert cond.shape == (3,) and cond.at_step(1, 4).timestep.tolist() == [2.0, 2.0, 2.0]


def test_the_released_architectures_sizes():
    """The preset's transformer has the official constructor's 1,006,946,304 parameters (built on the meta device:
    no memory), its text tower OpenCLIP ViT-H/14's 354 M, and the VQ model down-samples by 16 (64 x 64 ids at
    1024 px)."""
    import config
    p = config.PRESETS["meissonic"]
    with torch.device("meta"):
        counts = [sum(t.numel() for t in m.parameters()) for m in (MeissonicTransformer(**p["generator"]),
                                                                  CLIPTextEncoder(**p["text_encoder"]))]
        vq = VQModel(**p["tokenizer"])
    assert counts[0] == 1_006_946_304 and 350e6 < counts[1] < 360e6
    assert vq.factor == 16 and p["prompt"]["resolution"] // vq.factor == 64


def test_full_size_measurement_on_a_tiny_preset(monkeypatch, capsys):
    """full_size.meissonic_forward (what bench.py full-size runs in a child for --presets meissonic), here on a
    preset of the tiny sizes: it builds the three models of the preset and times one forward of each."""
    import config
    import full_size
    strip = ("_class_name", "sample_size", "scaling_factor", "pad_token_id")
    preset = dict(config.PRESETS["meissonic"], **{key: {k: v for k, v in TINY[sub].items() if k not in strip}
                                                  for key, sub in (("generator", "transformer"),
                                                                   ("tokenizer", "vqvae"),
                                                                   ("text_encoder", "text_encoder"))})
    preset["prompt"] = dict(preset["prompt"], resolution=32)
    monkeypatch.setitem(config.PRESETS, "test-meissonic", preset)
    full_size.meissonic_forward("test-meissonic")
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = sum(p.numel() for p in MeissonicTransformer(**preset["generator"]).parameters())
    assert row["parameters"]["transformer"] == want and row["token_grid"] == [16, 16] and row["prompt_tokens"] == 77
    assert all(row[k] >= 0 for k in ("transformer_forward_b1_s", "transformer_forward_b2_s", "text_encoder_forward_s",
                                     "vq_decode_s"))


# ----------------------------------------------------------------------------------------------------------------
# The command line.
# ----------------------------------------------------------------------------------------------------------------
def test_teacher_sample_cli_with_prompts(tiny, tmp_path, capsys):
    out = str(tmp_path / "grid.png")
    teacher_mod.main(["sample", "--teacher", "meissonic", "--teacher-ckpt", tiny, "--prompt", "a red circle",
                      "--prompt", "two blue squares", "--n", "3", "--steps", "3", "--cfg", "2", "--resolution", "32",
                      "--out", out])
    record = json.load(open(out[:-4] + ".json"))
    assert record["prompts"] == ["a red circle", "two blue squares", "a red circle"]
    assert record["guidance"] == 2.0 and record["steps"] == 3 and record["negative_prompt"].startswith("worst")
    assert record["micro_conds"] == [32.0, 32.0, 0.0, 0.0, 6.0] and record["timestep"] == "counter"
    assert os.path.getsize(out) > 0 and "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("args,match", [
    (["--prompt", "   "], "prompt is empty"),
    ([], "needs --prompt"),
    (["--prompt", "a", "--steps", "0"], "--steps"),
])
def test_teacher_sample_cli_bad_input(tiny, tmp_path, args, match):
    with pytest.raises(UserError, match=match):
        teacher_mod.main(["sample", "--teacher", "meissonic", "--teacher-ckpt", tiny, "--resolution", "32",
                          "--out", str(tmp_path / "g.png"), *args])
    assert not (tmp_path / "g.png").exists()


def test_without_a_checkpoint_meissonic_means_the_toy_world_and_no_world_says_what_to_pass(tmp_path, monkeypatch):
    from config import PRESETS
    assert teacher_mod.text_to_image_folder("meissonic", verbose=False) == \
        ("meissonic-toy", PRESETS["meissonic-toy"]["bundled"]["folder"])
    assert teacher_mod.text_to_image_folder("meissonic", "DIR") == ("meissonic", "DIR")
    monkeypatch.delitem(PRESETS["meissonic-toy"], "bundled")
    with pytest.raises(UserError, match="has no bundled weights: pass --teacher-ckpt"):
        teacher_mod.main(["sample", "--teacher", "meissonic", "--prompt", "a red circle", "--out",
                          str(tmp_path / "g.png")])


# ----------------------------------------------------------------------------------------------------------------
# The pieces a course assignment blanks: a BPE merge, RoPE over text and image positions, joint attention.
# ----------------------------------------------------------------------------------------------------------------
def tiny_bpe(merges):
    symbols = {"<|startoftext|>", "<|endoftext|>", "a", "b", "c</w>", "ab", "bc</w>", "o", "o</w>", "oo", "oo</w>",
               "ooo</w>"}
    return CLIPTokenizer({s: i for i, s in enumerate(sorted(symbols))}, "#version: 0.2\n" + "\n".join(merges))


def test_bpe_merges_the_lowest_rank_everywhere():
    tok = tiny_bpe(["b c</w>", "a b"])
    assert tok.bpe("abc") == ["a", "bc</w>"], "rank 0 (b c</w>) first; then no rule joins a and bc</w>"
    tok = tiny_bpe(["o o", "oo o</w>"])
    assert tok.bpe("ooo") == ["ooo</w>"]
    assert tok.bpe("oooo") == ["oo", "o", "o</w>"], "non-overlapping, left to right: o o o o</w> -> oo o o</w>"
    assert tok.bpe("c") == ["c</w>"] and tok.bpe("ab") == ["a", "b</w>"], "'</w>' marks the word's last symbol"


def test_rope_rotates_image_positions_by_axis_and_leaves_text_alone():
    from meissonic import apply_rope, image_ids, rope_tables
    ids = torch.cat([torch.zeros(3, 3), image_ids(4, 5)])                          # 3 text tokens, a 4 x 5 grid
    cos, sin = rope_tables(ids, [2, 4, 6])
    assert cos.shape == sin.shape == (23, 12) and cos.dtype == torch.float32
    assert torch.equal(cos[:3], torch.ones(3, 12)) and torch.equal(sin[:3], torch.zeros(3, 12)), "text: identity"
    row, col = 2, 3
    want = torch.tensor([0, 0] + [row, row, row / 100, row / 100] + [col * 10000 ** (-2 * k / 6) for k in
                                                                     (0, 0, 1, 1, 2, 2)], dtype=torch.float64)
    torch.testing.assert_close(cos[3 + row * 5 + col], want.cos().float())
    torch.testing.assert_close(sin[3 + row * 5 + col], want.sin().float())
    # a rotation: the score of q at one position and k at another depends on their offset only
    q, k = torch.randn(2, 1, 1, 1, 12).unbind(0)
    rot = [apply_rope(x, cos[None, None, i:i + 1], sin[None, None, i:i + 1]) for x, i in
           ((q, 3 + 0 * 5 + 1), (k, 3 + 2 * 5 + 3), (q, 3 + 1 * 5 + 0), (k, 3 + 3 * 5 + 2))]
    torch.testing.assert_close((rot[0] * rot[1]).sum(), (rot[2] * rot[3]).sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rot[0].norm(), q.norm())


def test_joint_attention_is_one_softmax_over_text_then_image():
    from meissonic import Attention
    torch.manual_seed(0)
    attn = Attention(8, 2, dual=True)
    for norm in (attn.norm_q, attn.norm_k, attn.norm_added_q, attn.norm_added_k):
        norm.weight.data.uniform_(0.5, 1.5)
    x, t = torch.randn(1, 4, 8), torch.randn(1, 3, 8)
    cos, sin = torch.rand(7, 4), torch.rand(7, 4)                                    # any tables: [L+N, Dh]
    img, txt = attn(x, (cos, sin), t)

    def heads(y, proj, norm):
        return norm(proj(y).reshape(1, -1, 2, 4).transpose(1, 2))                   # [1, S, 8] -> [1, 2, S, 4]
    q = torch.cat([heads(t, attn.add_q_proj, attn.norm_added_q), heads(x, attn.to_q, attn.norm_q)], 2)
    k = torch.cat([heads(t, attn.add_k_proj, attn.norm_added_k), heads(x, attn.to_k, attn.norm_k)], 2)
    v = torch.cat([heads(t, attn.add_v_proj, lambda y: y), heads(x, attn.to_v, lambda y: y)], 2)

    def rotate(y):
        pairs = torch.stack([-y[..., 1::2], y[..., 0::2]], -1).flatten(-2)
        return y * cos + pairs * sin
    w = torch.softmax(rotate(q) @ rotate(k).transpose(-1, -2) / 2.0, -1)          # scale 1/sqrt(Dh = 4)
    out = (w @ v).transpose(1, 2).reshape(1, 7, 8)                                  # [1, 2, 7, 4] -> [1, 7, 8]
    torch.testing.assert_close(txt, attn.to_add_out(out[:, :3]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(img, attn.to_out[0](out[:, 3:]), rtol=1e-5, atol=1e-6)
