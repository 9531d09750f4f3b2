"""MaskGen-VQ, TA-TiTok and the open_clip text tower beyond the golden fixtures: the released sizes, other
configurations' keys, the activation switch, the soft (expected-code) decode, the train-mode trap and bad input."""
import pytest
import torch
import torch.nn.functional as F

from config import UserError
from maskgen import RELEASED, MaskGenVQ, aesthetic_sinusoid, parameter_count
from tatitok import TATiTok, bl128
from text_encoder import CLIPTextEncoder, from_open_clip, open_clip_config


def tiny_maskgen(**kw):
    torch.manual_seed(0)
    c = dict(codebook_size=16, num_latent_tokens=6, text_embed_dim=12, decoder_embed_dim=16, decoder_depth=2,
             decoder_num_heads=2, micro_condition_embed_dim=8, condition_num_classes=3)
    return MaskGenVQ(**{**c, **kw}).eval()


def tiny_tatitok():
    torch.manual_seed(0)
    model = TATiTok(crop_size=16, enc=(16, 1, 2), dec=(24, 1, 2), enc_patch=8, dec_patch=4, num_latent_tokens=4,
                    token_size=4, codebook_size=10, text_context_length=5, text_embed_dim=12)
    for p in model.parameters():                                   # the constructor's zeros would hide mistakes
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def test_released_parameter_counts():
    """The official classes give bl128 391.0 M (encoder 86.0, decoder 304.4), MaskGen-L 604.3 M, XL 1176.6 M."""
    with torch.device("meta"):
        counts = {name: parameter_count(MaskGenVQ(**size)) / 1e6 for name, size in RELEASED.items()}
        tok = bl128()
    assert round(counts["L"], 1) == 604.3 and round(counts["XL"], 1) == 1176.6
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6                    # noqa: E731
    assert (round(count(tok), 1), round(count(tok.encoder), 1), round(count(tok.decoder), 1)) == (391.0, 86.0, 304.4)


def maskgen_spec_keys(m, depth, d, k, t, micro, tied):
    """SPEC_maskgen.md section 2's table, for any configuration."""
    rows = k + 1 + 3 + 1
    keys = {"embeddings.weight": (rows, d), "pos_embed": (1, 6, d), "text_embed_proj.weight": (d, t),
            "text_embed_proj.bias": (d,), "cond_pooled_proj.weight": (d, t + micro), "cond_pooled_proj.bias": (d,),
            "norm.linear.weight": (2 * d, d), "norm.linear.bias": (2 * d,)}
    keys.update({"lm_head.weight": (rows, d)} if tied else {"lm_head.weight": (k, d), "lm_head.bias": (k,)})
    for i in range(depth):
        last, p = i == depth - 1, f"blocks.{i}."
        keys.update({p + "norm1.linear.weight": (6 * d, d), p + "norm1.linear.bias": (6 * d,),
                     p + "norm1_context.linear.weight": ((2 if last else 6) * d, d),
                     p + "norm1_context.linear.bias": ((2 if last else 6) * d,)})
        for name in ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0"] + \
                ([] if last else ["to_add_out"]):
            keys.update({p + f"attn.{name}.weight": (d, d), p + f"attn.{name}.bias": (d,)})
        for ff in ["ff"] + ([] if last else ["ff_context"]):
            keys.update({p + f"{ff}.net.0.proj.weight": (4 * d, d), p + f"{ff}.net.0.proj.bias": (4 * d,),
                         p + f"{ff}.net.2.weight": (d, 4 * d), p + f"{ff}.net.2.bias": (d,)})
    return keys


@pytest.mark.parametrize("depth,micro,tied", [(1, True, True), (3, False, True), (2, True, False)])
def test_maskgen_other_configs_keys_and_forward(depth, micro, tied):
    model = tiny_maskgen(decoder_depth=depth, micro_condition=micro, weight_tying=tied, micro_condition_embed_dim=7)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == maskgen_spec_keys(model, depth, 16, 16, 12, 7 if micro else 0, tied)
    for p in model.parameters():                                   # zero-initialised adaLN would hide the score
        torch.nn.init.normal_(p, std=0.2)
    args = torch.randint(0, 17, (2, 6)), torch.randn(2, 5, 12), torch.randn(2, 1, 12)
    logits = model(*args, torch.tensor([6., 5.]))
    assert logits.shape == (2, 6, 16) and torch.isfinite(logits).all()
    other = model(*args, torch.tensor([6., 4.]))                   # the score reaches sample 1 only, if read at all
    assert torch.equal(logits[0], other[0]) and torch.equal(logits[1], other[1]) != micro


def test_aesthetic_sinusoid_sin_half_first_and_odd_width_padded():
    emb = aesthetic_sinusoid(torch.tensor([0.0, 6.5]), 7)
    assert emb.shape == (2, 7) and torch.equal(emb[:, -1], torch.zeros(2))
    assert torch.equal(emb[0, :3], torch.zeros(3)) and torch.equal(emb[0, 3:6], torch.ones(3))   # sin 0, cos 0
    assert torch.allclose(emb[1, 0], torch.sin(torch.tensor(650.0)))                             # f_0 = 1


def test_maskgen_head_is_tied_and_never_predicts_the_mask():
    model = tiny_maskgen()
    assert model.lm_head.weight is model.embeddings.weight
    model.norm.linear.weight.data.zero_()
    model.norm.linear.bias.data.zero_()                            # final norm = plain LayerNorm without affine
    trace = {}
    logits = model(torch.full((1, 6), 16), torch.randn(1, 5, 12), torch.randn(1, 1, 12), torch.tensor([6.5]),
                   trace=trace)
    assert logits.shape[-1] == 16                                  # K codes, the mask id 16 is not a class
    torch.testing.assert_close(logits, trace["final_norm"] @ model.embeddings.weight[:16].T)


def test_maskgen_refuses_train_mode_unless_allowed():
    model = tiny_maskgen().train()
    args = torch.randint(0, 16, (1, 6)), torch.randn(1, 5, 12), torch.randn(1, 1, 12), torch.tensor([6.5])
    with pytest.raises(RuntimeError, match="re-masks its input"):
        model(*args)
    model.allow_train = True
    assert model(*args).shape == (1, 6, 16)


def test_open_clip_layout_and_the_activation_switch():
    """An open_clip text state dict (packed q/k/v, text_projection as [W, E]) made from a transformers-layout model
    loads strictly after conversion and gives the same outputs; QuickGELU and exact GELU differ on the same
    weights; an unknown key is a one-line error."""
    cfg = dict(embed_dim=8, quick_gelu=True,
               text_cfg=dict(context_length=6, vocab_size=20, width=16, heads=2, layers=2))
    torch.manual_seed(0)
    ours = CLIPTextEncoder(**open_clip_config(**cfg)).eval()
    s = ours.state_dict()
    oc = {"token_embedding.weight": s["text_model.embeddings.token_embedding.weight"],
          "positional_embedding": s["text_model.embeddings.position_embedding.weight"],
          "ln_final.weight": s["text_model.final_layer_norm.weight"],
          "ln_final.bias": s["text_model.final_layer_norm.bias"],
          "text_projection": s["text_projection.weight"].T, "logit_scale": torch.tensor(4.6)}
    for i in range(2):
        p, q = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            oc[q + f"attn.in_proj_{kind}"] = torch.cat([s[p + f"self_attn.{n}_proj.{kind}"] for n in "qkv"])
            for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                oc[q + f"{a}.{kind}"] = s[p + f"{b}.{kind}"]
    ids = torch.tensor([[18, 3, 5, 19, 0, 0], [18, 7, 19, 0, 0, 0]])          # SOT = vocab - 2, EOT = vocab - 1
    quick = CLIPTextEncoder(**open_clip_config(**cfg)).eval()
    quick.load_state_dict(from_open_clip(oc), strict=True)
    exact = CLIPTextEncoder(**open_clip_config(**dict(cfg, quick_gelu=False))).eval()
    exact.load_state_dict(from_open_clip(oc), strict=True)
    with torch.no_grad():
        a, b, c = ours(ids), quick(ids), exact(ids)
    torch.testing.assert_close(a["text_embeds"], b["text_embeds"], atol=0, rtol=0)
    assert (a["last_hidden_state"] - c["last_hidden_state"]).abs().max() > 1e-4
    assert torch.equal(a["pooled_output"], a["last_hidden_state"][torch.arange(2), ids.argmax(-1)])  # open_clip's pool
    with pytest.raises(UserError, match="unknown key 'visual_proj'"):
        from_open_clip({**oc, "visual_proj": torch.zeros(1)})


def test_depth_to_space_reads_channels_as_p1_p2_rgb():
    """Channel (p1 pd + p2) 3 + c of the 1x1 conv's output is pixel (h pd + p1, w pd + p2) of colour c."""
    dec = tiny_tatitok().decoder
    x = torch.randn(2, 4 * 4 * 3, 3, 5)
    want = x.reshape(2, 4, 4, 3, 3, 5).permute(0, 3, 4, 1, 5, 2).reshape(2, 3, 12, 20)   # -> b c (h p1) (w p2)
    assert torch.equal(F.pixel_shuffle(dec.channels_rgb_last(x), 4), want)


def test_tatitok_soft_decode_is_the_hard_one_at_one_hot_and_differentiable():
    model = tiny_tatitok()
    ids, text = torch.randint(0, 10, (2, 4)), torch.randn(2, 5, 12)
    hard = model.decode_tokens(ids, text)
    soft = model.decode(model.expected_latents(F.one_hot(ids, 10).float()), text)
    torch.testing.assert_close(soft, hard)
    logits = torch.randn(2, 4, 10, requires_grad=True)
    model.decode(model.expected_latents(logits.softmax(-1)), text).square().mean().backward()
    assert logits.grad.abs().sum() > 0
    _, enc_ids = model.encode(torch.rand(2, 3, 16, 16))
    assert enc_ids.shape == (2, 1, 4)


def test_tatitok_bad_config_and_text_shape():
    with pytest.raises(UserError, match="only the released VQ form"):
        TATiTok.from_config({"model": {"vq_model": {"quantize_mode": "vq", "is_legacy": True}},
                             "dataset": {"preprocessing": {"crop_size": 16}}})
    with pytest.raises(UserError, match=r"expected \[B, 5, 12\]"):
        tiny_tatitok().decode_tokens(torch.zeros(1, 4, dtype=torch.long), torch.randn(1, 77, 12))


def test_maskgen_sampler_is_the_official_loop():
    """teacher.sample with MaskGen's settings against a literal transcription of MaskGen_VQ.generate (SPEC_maskgen.md
    facts (d)): cond + s (cond - uncond) with s = (g - 1)(1 - cos(pi r))/2 + 1, logits / (0.5 + 0.8 (1 - r)), argmax
    with Gumbel a = 2 (1 - r), confidence = tempered logit + a G', floor(128 arccos(r) / (pi/2)) left masked."""
    import math
    from maskgen import MaskGenCondition
    from teacher import sample
    model = tiny_maskgen(num_latent_tokens=128)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)               # logits of order 1, where the noise matters
    b, g = 2, 12.0
    cond = MaskGenCondition(torch.randn(b, 5, 12), torch.randn(b, 1, 12), torch.randn(b, 5, 12),
                            torch.randn(b, 1, 12), torch.full((b,), 6.5), torch.randn(b, 5, 12))
    trace = []
    ours = sample(model, cond, 16, schedule="arccos", randomize_temperature=2.0, guidance=g + 1,
                  guidance_anneal="maskgen", draw="gumbel-max", generator=torch.Generator().manual_seed(3),
                  trace=trace)[..., 0]

    gen = torch.Generator().manual_seed(3)
    noise = lambda shape: -torch.log(-torch.log(torch.rand(shape, generator=gen).clamp(1e-20, 1 - 1e-7)))  # noqa
    ids, counts = torch.full((b, 128), 16), []
    with torch.no_grad():
        for step in range(16):
            ratio = (step + 1) / 16
            a, is_mask = 2.0 * (1 - ratio), ids == 16
            s = (g - 1) * (1 - math.cos(ratio * math.pi)) / 2 + 1
            c = model(ids, cond.hidden, cond.pooled, cond.aesthetic)
            u = model(ids, cond.neg_hidden, cond.neg_pooled, cond.aesthetic)
            logits = (c + (c - u) * s) / (0.5 + 0.8 * (1 - ratio))
            sampled = torch.where(is_mask, (logits + a * noise(logits.shape)).argmax(-1), ids)
            conf = torch.where(is_mask, logits.gather(-1, sampled[..., None])[..., 0], torch.tensor(float("inf")))
            conf = conf + a * noise(conf.shape)
            if step == 15:
                ids = sampled
                break
            mask_len = min(max(1, math.floor(128 * math.acos(ratio) / (math.pi / 2))), int(is_mask.sum(-1)[0]) - 1)
            cut = conf.sort(-1).values[:, mask_len - 1:mask_len]
            ids = torch.where(conf <= cut, 16, sampled)
            counts.append(int((ids == 16).sum(-1)[0]))
    assert counts == [122, 117, 112, 107, 102, 96, 91, 85, 79, 72, 66, 58, 50, 41, 28]
    assert [int(m[0].sum()) for _, m in trace] == counts
    assert torch.equal(ours, ids)


def write_released(folder, config, state):
    import json
    import os
    from checkpoints import write_safetensors
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    write_safetensors({k: v.contiguous() for k, v in state.items()}, os.path.join(folder, "model.safetensors"))


def test_released_folders_load_strictly_and_bad_ones_say_why(tmp_path):
    from maskgen import load_maskgen
    from tatitok import load_tatitok
    fx = torch.load("tests/golden/maskgen_generator.pt", weights_only=True)
    one_name = {k: v for k, v in fx["state_dict"].items() if k != "lm_head.weight"}    # the hub stores a tie once
    write_released(tmp_path / "gen", fx["config"], one_name)
    model = load_maskgen(str(tmp_path / "gen"))
    assert model.lm_head.weight is model.embeddings.weight
    torch.testing.assert_close(model.embeddings.weight, fx["state_dict"]["embeddings.weight"], atol=0, rtol=0)
    write_released(tmp_path / "short", fx["config"], {k: v for k, v in one_name.items() if k != "pos_embed"})
    with pytest.raises(UserError, match="1 missing: pos_embed"):
        load_maskgen(str(tmp_path / "short"))
    tk = torch.load("tests/golden/tatitok_tokenizer.pt", weights_only=True)
    write_released(tmp_path / "tok", tk["config"], tk["state_dict"])
    ids = load_tatitok(str(tmp_path / "tok")).encode(tk["inputs"]["images"])[1]
    assert torch.equal(ids, tk["outputs"]["encode_ids"])
    with pytest.raises(UserError, match="not a MaskGen config"):
        load_maskgen(str(tmp_path / "tok"))
    with pytest.raises(UserError, match="not a TA-TiTok config"):
        load_tatitok(str(tmp_path / "gen"))


def test_maskgen_presets_build_the_released_sizes_and_refuse_the_class_path():
    from config import PRESETS
    from teacher import load_pair
    with torch.device("meta"):
        assert round(parameter_count(MaskGenVQ(**PRESETS["maskgen-xl"]["generator"])) / 1e6, 1) == 1176.6
        assert round(sum(p.numel() for p in TATiTok(**PRESETS["maskgen"]["tokenizer"]).parameters()) / 1e6, 1) == 391.0
        text = CLIPTextEncoder(**open_clip_config(**PRESETS["maskgen"]["text_encoder"]))
    assert round(sum(p.numel() for p in text.parameters()) / 1e6, 1) == 123.7
    with pytest.raises(UserError, match="maskgen.load_maskgen"):
        load_pair("maskgen")


def test_full_size_maskgen_row_on_a_tiny_preset(monkeypatch, capsys):
    """full_size.maskgen_forward (what bench.py full-size runs in a child for --presets maskgen) on tiny sizes."""
    import json
    import config
    import full_size
    preset = dict(config.PRESETS["maskgen"],
                  generator=dict(codebook_size=16, num_latent_tokens=6, text_embed_dim=12, decoder_embed_dim=16,
                                 decoder_depth=2, decoder_num_heads=2, micro_condition_embed_dim=8,
                                 condition_num_classes=3),
                  tokenizer=dict(crop_size=16, enc=(16, 1, 2), dec=(24, 1, 2), enc_patch=8, dec_patch=4,
                                 num_latent_tokens=6, token_size=4, codebook_size=16, text_context_length=5,
                                 text_embed_dim=12),
                  text_encoder=dict(embed_dim=12, quick_gelu=True,
                                    text_cfg=dict(context_length=5, vocab_size=30, width=12, heads=2, layers=2)))
    monkeypatch.setitem(config.PRESETS, "test-maskgen", preset)
    full_size.maskgen_forward("test-maskgen")
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["parameters"]["generator"] == parameter_count(MaskGenVQ(**preset["generator"]))
    assert row["tokens"] == 6 and row["prompt_tokens"] == 5 and row["image_px"] == 16
    assert all(row[k] >= 0 for k in ("generator_forward_b1_s", "generator_forward_b2_s", "text_encoder_forward_s",
                                     "tatitok_decode_s"))


def test_tatitok_l2_normed_codes_and_the_clustering_buffer():
    """use_l2_norm: the nearest code by cosine, output unit-normed; clustering_vq keeps its usage buffer as a key."""
    model = TATiTok(crop_size=16, enc=(16, 1, 2), dec=(24, 1, 2), enc_patch=8, dec_patch=4, num_latent_tokens=4,
                    token_size=4, codebook_size=10, text_context_length=5, text_embed_dim=12, use_l2_norm=True,
                    clustering_vq=True)
    torch.nn.init.normal_(model.quantize.embedding.weight)
    z = torch.randn(3, 4, 1, 4)
    z_q, ids = model.quantize_latents(z)
    cos = F.normalize(z[:, :, 0].transpose(1, 2), dim=-1) @ F.normalize(model.quantize.embedding.weight, dim=-1).T
    assert torch.equal(ids[:, 0], cos.argmax(-1))
    torch.testing.assert_close(z_q.norm(dim=1), torch.ones(3, 1, 4))
    torch.testing.assert_close(z_q, model.codes(ids[:, 0]))
    assert model.state_dict()["quantize.embed_prob"].shape == (10,)


def test_prompts_to_images_end_to_end_at_tiny_sizes():
    """teacher.maskgen_condition -> sample (MaskGen's rule) -> tokens_to_images through TA-TiTok, which reads the
    prompt: a prompt's own states differ from the empty prompt's, and decoding without the condition is refused."""
    from teacher import maskgen_condition, sample, tokens_to_images
    from text_encoder import CLIPTokenizer
    tok = CLIPTokenizer.from_folder("tests/golden/clip_tokenizer", max_length=5)
    torch.manual_seed(0)
    enc = CLIPTextEncoder(**dict(open_clip_config(embed_dim=12, text_cfg=dict(context_length=5, vocab_size=len(
        tok.vocab), width=12, heads=2, layers=2)), eos_token_id=tok.vocab["<|endoftext|>"])).eval()
    cond = maskgen_condition(tok, enc, ["a red circle", "two squares"], aesthetic=6.0)
    assert cond.pooled.shape == (2, 1, 12) and cond.final.shape == (2, 5, 12) and cond.aesthetic.tolist() == [6., 6.]
    assert not torch.equal(cond.hidden, cond.neg_hidden)
    model, vq = tiny_maskgen(num_latent_tokens=4, codebook_size=10), tiny_tatitok()
    tokens = sample(model, cond, 4, randomize_temperature=2.0, guidance=5.0, guidance_anneal="maskgen",
                    draw="gumbel-max", generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (2, 4, 1) and (tokens < 10).all()
    images = tokens_to_images(model, vq, tokens, cond)
    assert images.shape == (2, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    with pytest.raises(ValueError, match="decodes with the prompt"):
        tokens_to_images(model, vq, tokens)
    with pytest.raises(UserError, match="a prompt is empty"):
        maskgen_condition(tok, enc, ["  "])
