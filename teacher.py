"""Masked-diffusion teachers behind one interface, and the multi-step sampler every family goes through.

The architectures live one file each, below this one: MaskBit's LFQBert (maskbit.py), MaskGIT's MaskTransformer
(maskgit.py), both over bert.py's blocks; Meissonic's text-conditional transformer (meissonic.py) with its VQ model
(vq_model.py) and CLIP text side (text_encoder.py).  All load the released checkpoints with ``strict=True`` and
compute the official outputs (``tests/golden/SPEC*.md``).  What the generator, the distillation loop and the
evaluation use is one uniform interface:

    tokens [B, N, S] --features--> x [B, N, F] --input_embed--> e [B, N, D] --forward_embeddings--> logits [B, N, S, V]
    model.logits(tokens, cond, drop) -> logits [B, N, S, V]

where ``cond`` is class ids [B] (``drop`` replaces them by the null class) or, for text, a
``meissonic.TextCondition`` (``drop`` selects the negative prompt: the unconditional branch of CFG).
``drop_label=None`` means that nothing is dropped, for every family.  (Trap in the official MaskBit code: there
``None`` replaces every label by the null class, and writes it into the caller's tensor.  Not here.)

Here, canonical for the whole project: the multi-step sampler (``sample``: MaskBit's, Halton-MaskGIT v1.0's and
Meissonic's schedulers, which differ in their step counts, noise annealing and timestep), building a teacher and
its tokenizer from a preset and files (``load_pair``; ``load_meissonic`` for a released text-to-image folder) and a
batch of prompts as a condition (``prompt_condition``).  The mask schedule and CFG live one floor down, in
masking.py.

Shapes: B batch, N tokens (h*w), S splits, V classes per split, D width, F input-feature width.

Run: ``python teacher.py sample --teacher maskbit --steps 64 --out grid.png`` (add ``--ckpt G.bin
--tokenizer-ckpt T.bin`` for a released pair); ``python teacher.py sample --teacher meissonic --prompt "two red
circles left of a blue square"`` (the bundled toy world; ``--teacher-ckpt DIR`` for the released MeissonFlow/Meissonic
folder).
"""
import json
import os

import torch

from checkpoints import load_folder, load_model
from config import (PRESETS, ArgumentParser, UserError, check_range, get_preset, maskbit_scale_to_w, parse_labels,
                    runtime)
from data import save_image_grid
from masking import SCHEDULES, STEP_COUNTS, guidance_at, guided_logits, halton_counts, maskbit_masked_after
from maskbit import LFQBert
from maskgit import MaskTransformer
from maskgen import MaskGenCondition
from meissonic import MeissonicTransformer, TextCondition
from text_encoder import CLIPTokenizer, encode_prompts, load_text_encoder
from tokenizer import build_tokenizer
from vq_model import VQModel


def build_teacher(family, config):
    """'maskbit' -> LFQBert(**config); 'maskgit' -> MaskTransformer(**config); 'meissonic' ->
    MeissonicTransformer(**config)."""
    return {"maskbit": LFQBert, "maskgit": MaskTransformer, "meissonic": MeissonicTransformer}[family](**config)


MEISSONIC_KEYS = ("num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads",
                  "joint_attention_dim", "pooled_projection_dim", "axes_dims_rope", "vocab_size", "codebook_size",
                  "downsample", "upsample", "patch_size", "in_channels", "guidance_embeds")
VQ_KEYS = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
           "layers_per_block", "act_fn", "latent_channels", "num_vq_embeddings", "norm_num_groups", "vq_embed_dim",
           "norm_type", "mid_block_add_attention", "lookup_from_codebook")


def load_meissonic(folder, resolution, verbose=True):
    """A released Meissonic folder (``transformer/``, ``vqvae/``, ``text_encoder/``, ``tokenizer/``, each with its
    config.json) -> (transformer, VQ model, CLIP tokenizer, CLIP text encoder), all loaded strictly; the token
    grid to sample is resolution / the VQ model's down-sampling factor, as in the official pipeline."""
    if not os.path.isdir(folder):
        raise UserError(f"--teacher-ckpt '{folder}': Meissonic's checkpoint is the released folder (transformer/, "
                        f"vqvae/, text_encoder/, tokenizer/), not a file")
    missing = [s for s in ("transformer", "vqvae", "text_encoder", "tokenizer") if not os.path.isdir(
        os.path.join(folder, s))]
    if missing:
        raise UserError(f"'{folder}' is not a Meissonic folder: no {', '.join(s + '/' for s in missing)} in it")

    def build_transformer(c):
        if "num_single_layers" not in c or "codebook_size" not in c:
            raise UserError(f"'{folder}/transformer' is not a Meissonic transformer (its config.json has no "
                            f"num_single_layers / codebook_size: another family?); pass --teacher for its family")
        return MeissonicTransformer(**{k: c[k] for k in MEISSONIC_KEYS if k in c})

    def build_vq(c):
        return VQModel(**{k: c[k] for k in VQ_KEYS if k in c})

    transformer, _ = load_folder(os.path.join(folder, "transformer"), "Meissonic transformer", build_transformer)
    vq, _ = load_folder(os.path.join(folder, "vqvae"), "Meissonic vqvae", build_vq)
    side = resolution // vq.factor
    if resolution % vq.factor or side % 2 and hasattr(transformer.down_block, "downsample"):
        raise UserError(f"--resolution {resolution}: must be a multiple of {vq.factor * 2} (VQ factor {vq.factor}, "
                        f"then the transformer's 2x2 down-sampling)")
    transformer.token_grid = (side, side)
    text = load_text_encoder(os.path.join(folder, "text_encoder"))
    tok = CLIPTokenizer.from_folder(os.path.join(folder, "tokenizer"),
                                    max_length=text.config["max_position_embeddings"])
    if verbose:
        print(f"loaded Meissonic '{folder}' (transformer, vqvae, text_encoder, tokenizer with pad {tok.pad!r}; "
              f"token grid {transformer.token_grid[0]} x {transformer.token_grid[1]})")
    return transformer.requires_grad_(False), vq.requires_grad_(False), tok, text.requires_grad_(False)


# A family's name given without checkpoints means its bundled toy world, said in one line.
TOY_DEFAULTS = {
    "maskbit": ("maskbit-toy", "--teacher maskbit without checkpoints uses the bundled toy MaskBit pair (preset "
                "maskbit-toy); for the released 12-bit pair pass --teacher-ckpt maskbit_generator_12bit.bin "
                "--tokenizer-ckpt maskbit_tokenizer_12bit.bin"),
    "meissonic": ("meissonic-toy", "--teacher meissonic without --teacher-ckpt uses the bundled toy world (preset "
                  "meissonic-toy, assets/meissonic_toy/); for the released model pass --teacher-ckpt, the "
                  "MeissonFlow/Meissonic folder"),
}


def toy_default(preset, verbose=True):
    """-> (preset name, preset): the bundled toy world's for a family name in TOY_DEFAULTS, else preset's own."""
    p = get_preset(preset)
    toy, note = TOY_DEFAULTS.get(preset, (None, None))
    if toy is None or "bundled" not in PRESETS.get(toy, {}):
        return preset, p
    if verbose:
        print("note: " + note)
    return toy, PRESETS[toy]


def text_to_image_folder(preset, folder=None, verbose=True):
    """-> (resolved preset name, folder).  Without a folder, ``meissonic`` means the bundled toy world (preset
    meissonic-toy), said in one line, as ``--teacher maskbit`` means the toy MaskBit pair."""
    if folder is not None:
        get_preset(preset)
        return preset, folder
    preset, p = toy_default(preset, verbose)
    if "bundled" not in p:
        raise UserError(f"preset '{preset}' has no bundled weights: pass --teacher-ckpt ({p['released']['generator']})")
    return preset, p["bundled"]["folder"]


def micro_conds(resolution, aesthetic):
    """The pipeline's micro-conditions: (width, height, crop top, crop left, aesthetic score)."""
    return [float(resolution), float(resolution), 0.0, 0.0, float(aesthetic)]


def check_prompts(prompts):
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise UserError("a prompt is empty: pass --prompt \"two red circles left of a blue square\"")


def prompt_condition(tokenizer, encoder, prompts, negative_prompt, micro_conds, counter=True):
    """Prompts (a list) -> a TextCondition: each prompt's CLIP encoding, the negative prompt's as the unconditional
    branch (the empty string when there is none, as the official pipeline), micro_conds [5] for every sample;
    ``counter``: pass the pipeline's step counter as the timestep (else 0, as Di[M]O)."""
    check_prompts(prompts)
    device = next(encoder.parameters()).device
    unknown = sorted({w for prompt in prompts for w in tokenizer.unknown_words(prompt)})
    if unknown:
        print(f"note: the toy vocabulary has never seen {', '.join(repr(w) for w in unknown[:8])}: they are encoded "
              f"by their bytes and mean nothing to this teacher (its words: {tokenizer.known_path})")
    hidden, pooled = encode_prompts(tokenizer, encoder, prompts, device)
    neg_hidden, neg_pooled = encode_prompts(tokenizer, encoder, [negative_prompt or ""] * len(prompts), device)
    micro = torch.tensor([list(map(float, micro_conds))] * len(prompts), device=device)   # [B, 5]
    return TextCondition(hidden, pooled, neg_hidden, neg_pooled, micro, None, counter)


def maskgen_condition(tokenizer, encoder, prompts, aesthetic=6.5):
    """Prompts -> a MaskGenCondition: each prompt's penultimate states and pooled projection, the empty prompt's as
    the unconditional branch (MaskGen's sampler and its caption dropout), the aesthetic score for every sample, and
    the prompt's final-layer states for TA-TiTok's decoder."""
    check_prompts(prompts)
    device = next(encoder.parameters()).device
    hidden, pooled, final = encode_prompts(tokenizer, encoder, prompts, device, final=True)
    neg_hidden, neg_pooled = encode_prompts(tokenizer, encoder, [""] * len(prompts), device)
    return MaskGenCondition(hidden, pooled[:, None], neg_hidden, neg_pooled[:, None],      # [B, P] -> [B, 1, P]
                            torch.full((len(prompts),), float(aesthetic), device=device), final)


def load_pair(preset, teacher_ckpt=None, tokenizer_ckpt=None, verbose=True):
    """-> (teacher, tokenizer, resolved preset name).  Presets with bundled weights need no paths; ``maskbit``
    without paths means the bundled toy MaskBit pair, said in one line."""
    p = get_preset(preset)
    if p["family"] == "meissonic":
        raise UserError(f"preset '{preset}' is text-to-image: it loads through teacher.load_meissonic (python "
                        f"teacher.py sample --teacher {preset} --teacher-ckpt DIR --prompt ...)")
    if p["family"] == "maskgen":
        raise UserError(f"preset '{preset}': MaskGen's released files load with maskgen.load_maskgen and "
                        f"tatitok.load_tatitok, and python bench.py full-size --presets {preset} measures them; "
                        f"sampling and distilling it from the command line come with its toy pair (issue 40)")
    if teacher_ckpt is not None and os.path.isdir(teacher_ckpt):
        raise UserError(f"--teacher-ckpt '{teacher_ckpt}' is a folder, but preset '{preset}' takes a weights file; "
                        f"a released text-to-image folder goes with --teacher meissonic")
    if teacher_ckpt is None and tokenizer_ckpt is None:
        preset, p = toy_default(preset, verbose)
        if "bundled" not in p:
            raise UserError(f"preset '{preset}' has no bundled weights: pass --teacher-ckpt (released: "
                            f"{p['released']['generator']}) and --tokenizer-ckpt ({p['released']['tokenizer']})")
        teacher_ckpt, tokenizer_ckpt = p["bundled"]["teacher"], p["bundled"]["tokenizer"]
    elif teacher_ckpt is None or tokenizer_ckpt is None:
        raise UserError("pass both --teacher-ckpt and --tokenizer-ckpt (a teacher samples tokens of its own tokenizer)")
    teacher, _ = load_model("teacher", preset, teacher_ckpt, build_teacher, verbose)
    tokenizer, _ = load_model("tokenizer", preset, tokenizer_ckpt, build_tokenizer, verbose)
    return teacher.requires_grad_(False), tokenizer.requires_grad_(False), preset


# ----------------------------------------------------------------------------------------------------------------
# The multi-step sampler: MaskBit's, Halton-MaskGIT v1.0's (step counts: masking.py) and Meissonic's, which is
# MaskBit's cumulative counts on the cosine schedule, Gumbel temperature linspace(2, 0, N) ('halton' annealing),
# CFG against the negative prompt and the step counter as timestep (TextCondition.at_step).
# ----------------------------------------------------------------------------------------------------------------
DRAWS = ("multinomial", "gumbel-max")


def gumbel(shape, generator, device):
    """Standard Gumbel noise -log(-log u), u ~ U(0, 1) clamped away from 0 and 1."""
    u = torch.rand(shape, generator=generator, device=device).clamp(1e-20, 1 - 1e-7)
    return -torch.log(-torch.log(u))


@torch.no_grad()
def sample(model, labels, steps, schedule="arccos", temperature=1.0, randomize_temperature=0.0, remask="confidence",
           guidance=1.0, guidance_anneal="none", scale_pow=1.0, step_counts="maskbit", noise_anneal="maskbit",
           draw="multinomial", generator=None, tokens=None, trace=None):
    """Iterative decoding from all-mask (or from ``tokens`` [B, N, S] with mask ids) -> tokens [B, N, S].

    Step i of T = ``steps``: predict every masked entry from softmax(logits / temperature) under guidance
    ``guidance_at(...)``; decode the masked entries of highest confidence and leave the others masked, as many as
    ``step_counts`` says (see above; at least 1 decoded while steps remain).  Confidence is log p(sampled id) plus
    Gumbel noise * randomize_temperature * (1 - progress), progress per ``noise_anneal``, or a uniform random
    number (remask='random').  The last step fills every entry.  An entry once decoded stays decoded, even when
    the sampled id is the mask class (MaskGIT's 1025-way head), as in v1.0, which tracks its mask apart from the ids.
    draw='gumbel-max' is MaskGen's rule instead: at progress r = (i+1)/T the logits are divided by temperature *
    (0.5 + 0.8 (1 - r)), the id is argmax(logits + a G) with a = randomize_temperature (1 - r) (a sample at the
    step's temperature times a; greedy when a = 0, as at the last step), and the confidence is that tempered logit
    (not a log-probability) plus a fresh a G'.
    labels: class ids [B], or a meissonic.TextCondition (its negative prompt is the unconditional branch, and its
    ``at_step`` gives the timestep of step i).
    trace: a list that receives (pred [B, N, S], still masked [B, N, S]) after every step but the last."""
    if step_counts not in STEP_COUNTS or noise_anneal not in STEP_COUNTS:
        raise ValueError(f"step_counts and noise_anneal must be one of {STEP_COUNTS}")
    if draw not in DRAWS:
        raise ValueError(f"draw must be one of {DRAWS}")
    b = labels.shape[0]
    if tokens is None:
        tokens = torch.full((b, model.seq_len, model.splits), model.mask_id, dtype=torch.long, device=labels.device)
    tokens = tokens.clone()
    masked = tokens == model.mask_id                                   # [B, N, S]
    m = tokens[0].numel()
    counts = halton_counts(steps, m, schedule).to(tokens.device) if step_counts == "halton" else None
    for i in range(steps):
        n_masked = masked.flatten(1).sum(1)                            # [B]
        if n_masked.max() == 0:
            break
        w = guidance_at(guidance, i, steps, guidance_anneal, scale_pow)
        cond = labels.at_step(i, steps) if hasattr(labels, "at_step") else labels     # text: the step's timestep
        if draw == "gumbel-max":                                       # MaskGen's rule (docstring)
            r = (i + 1) / steps
            z = guided_logits(model, tokens, cond, w).float() / (temperature * (0.5 + 0.8 * (1 - r)))
            a = randomize_temperature * (1 - r)
            pred = torch.where(masked, (z + a * gumbel(z.shape, generator, z.device)).argmax(-1), tokens)
        else:
            logits = guided_logits(model, tokens, cond, w).float() / temperature
            probs = torch.softmax(logits, dim=-1)                      # [B, N, S, V]
            pred = torch.multinomial(probs.flatten(0, 2), 1, generator=generator).reshape(tokens.shape)  # [B, N, S]
            pred = torch.where(masked, pred, tokens)
        if i == steps - 1:
            return pred
        if draw == "gumbel-max":
            conf = z.gather(-1, pred[..., None])[..., 0] + a * gumbel(tokens.shape, generator, z.device)
        elif remask == "random":
            conf = torch.rand(tokens.shape, generator=generator, device=tokens.device)
        else:
            progress = (i + 1) / steps if noise_anneal == "maskbit" else i / (steps - 1)
            conf = torch.log(probs.gather(-1, pred[..., None])[..., 0].clamp_min(1e-30)) + \
                gumbel(tokens.shape, generator, tokens.device) * randomize_temperature * (1 - progress)
        conf = torch.where(masked, conf, torch.full_like(conf, float("inf")))  # never re-mask a decided entry
        if counts is None:
            keep_masked = maskbit_masked_after(i, steps, m, schedule).to(tokens.device)
        else:
            keep_masked = n_masked - counts[i]
        keep_masked = torch.minimum(keep_masked.clamp(min=1), n_masked - 1).clamp(min=0)  # [B]
        rank = conf.flatten(1).argsort(-1).argsort(-1)                 # 0 = least confident
        masked = (rank < keep_masked[:, None]).reshape(tokens.shape)   # [B, M] -> [B, N, S]
        tokens = torch.where(masked, torch.full_like(pred, model.mask_id), pred)
        if trace is not None:
            trace.append((pred, masked))
    return tokens


@torch.no_grad()
def tokens_to_images(model, tokenizer, tokens, cond=None):
    """Tokens [B, N, S] of a teacher (or its one-step copy) -> images [B, 3, H, W], float32 in [0, 1], on the CPU.
    TA-TiTok's decoder reads the prompt too: pass its MaskGenCondition as ``cond``."""
    ids = model.to_indices(tokens)                                     # [B, N]
    if getattr(tokenizer, "reads_text", False):
        if getattr(cond, "final", None) is None:
            raise ValueError("TA-TiTok decodes with the prompt: pass the MaskGenCondition the tokens were sampled with")
        return tokenizer.decode_tokens(ids, cond.final).float().clamp(0, 1).cpu()
    if getattr(model, "token_grid", None):                             # text-to-image: its grid may be non-square
        ids = ids.reshape(ids.shape[0], *model.token_grid)             # [B, N] -> [B, h, w]
    return tokenizer.indices_to_images(ids).float().clamp(0, 1).cpu()


# ----------------------------------------------------------------------------------------------------------------
# The sampler's command line.
# ----------------------------------------------------------------------------------------------------------------
def add_sampler_args(parser):
    """The teacher sampler's knobs; None means 'the preset's default'."""
    g = parser.add_argument_group("teacher sampler (defaults: the preset's)")
    g.add_argument("--steps", type=int, help="decoding steps")
    g.add_argument("--schedule", choices=SCHEDULES, help="mask schedule")
    g.add_argument("--temperature", type=float, help="softmax temperature (> 0): softmax(logits / T)")
    g.add_argument("--sm-temp", type=float, help="Halton-MaskGIT's softmax(logits * sm_temp): T = 1 / sm_temp")
    g.add_argument("--randomize-temperature", type=float, help="Gumbel noise on the confidence, annealed to 0")
    g.add_argument("--remask", choices=("confidence", "random"), help="which entries stay masked")
    g.add_argument("--step-counts", choices=STEP_COUNTS, help="entries decoded per step: MaskBit's or Halton v1.0's")
    g.add_argument("--noise-anneal", choices=STEP_COUNTS, help="Gumbel annealing: 1-(i+1)/T (maskbit), 1-i/(T-1)")
    g.add_argument("--guidance", "--cfg", dest="guidance", type=float,
                   help="CFG w in z_u + w (z_c - z_u); 1 = no guidance (text: z_u is the negative prompt's)")
    g.add_argument("--maskbit-scale", "--halton-cfg", dest="maskbit_scale", type=float,
                   help="CFG in MaskBit's / Halton-MaskGIT's form cond + s (cond - uncond): w = s + 1")
    g.add_argument("--guidance-anneal", choices=("none", "linear", "cosine"), help="guidance annealing")
    g.add_argument("--scale-pow", type=float, help="power of MaskBit's cosine guidance annealing")


def sampler_settings(args, preset):
    """Merge the command line over the preset's sampler defaults and check every value (preset: name or dict)."""
    s = dict((get_preset(preset) if isinstance(preset, str) else preset)["sampler"])
    for key in s:
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    if getattr(args, "maskbit_scale", None) is not None:
        s["guidance"] = maskbit_scale_to_w(args.maskbit_scale)
    if getattr(args, "sm_temp", None) is not None:
        s["temperature"] = 1.0 / check_range("--sm-temp", args.sm_temp, low=0, low_open=True)
    check_range("--steps", s["steps"], low=1)
    check_range("--temperature", s["temperature"], low=0, low_open=True)
    check_range("--randomize-temperature", s["randomize_temperature"], low=0)
    check_range("--guidance", s["guidance"], low=0)
    check_range("--scale-pow", s["scale_pow"], low=0, low_open=True)
    return s


def main_sample(argv=None):
    parser = ArgumentParser(prog="teacher.py sample", description="multi-step sampling from a masked teacher")
    parser.add_argument("--teacher", default="maskbit", help="preset name (python config.py lists them)")
    parser.add_argument("--ckpt", "--teacher-ckpt", dest="ckpt",
                        help="teacher weights (.bin/.pth/.pt); text-to-image: the released folder")
    parser.add_argument("--tokenizer-ckpt", help="tokenizer weights (.bin/last.ckpt/.pt)")
    parser.add_argument("--n", type=int, help="number of images (class: 32; text: one per --prompt)")
    parser.add_argument("--labels", help="class ids, comma separated (default: 0, 1, 2, ... cycled)")
    parser.add_argument("--prompt", action="append", help="text-to-image: a prompt (repeat for more; cycled to --n)")
    parser.add_argument("--negative-prompt", help="text-to-image: CFG's unconditional branch (the preset's)")
    parser.add_argument("--resolution", type=int, help="text-to-image: image side in pixels (the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="grid.png", help="PNG grid; the settings go to the same name .json")
    add_sampler_args(parser)
    args = parser.parse_args(argv)
    rt = runtime(args.device)
    p = get_preset(args.teacher)
    if p["family"] == "meissonic":
        if not args.prompt:
            raise UserError("text-to-image sampling needs --prompt \"...\" (repeat it for several prompts)")
        name, folder = text_to_image_folder(args.teacher, args.ckpt)
        p = get_preset(name)
        n = check_range("--n", args.n if args.n is not None else len(args.prompt), low=1)
        res = check_range("--resolution", args.resolution or p["prompt"]["resolution"], low=1)
        settings = sampler_settings(args, p)
        teacher, tokenizer, text_tok, text_enc = load_meissonic(folder, res)
        teacher, tokenizer, text_enc = teacher.to(rt.device), tokenizer.to(rt.device), text_enc.to(rt.device)
        prompts = [args.prompt[i % len(args.prompt)] for i in range(n)]
        negative = p["prompt"]["negative_prompt"] if args.negative_prompt is None else args.negative_prompt
        micro = micro_conds(res, p["prompt"]["aesthetic"])
        cond = prompt_condition(text_tok, text_enc, prompts, negative, micro, p["prompt"]["timestep"] == "counter")
        record = dict(prompts=prompts, negative_prompt=negative, resolution=res, micro_conds=micro,
                      timestep=p["prompt"]["timestep"], text_pad=text_tok.pad)
    else:
        n = check_range("--n", args.n if args.n is not None else 32, low=1)
        teacher, tokenizer, preset = load_pair(args.teacher, args.ckpt, args.tokenizer_ckpt)
        p = get_preset(preset)
        teacher, tokenizer = teacher.to(rt.device), tokenizer.to(rt.device)
        cond = parse_labels(args.labels, n, teacher.nclass).to(rt.device)
        record = dict(labels=cond.tolist(), tokenizer_ckpt=args.tokenizer_ckpt)
        settings, name = sampler_settings(args, p), preset
    gen = torch.Generator(rt.device).manual_seed(args.seed)
    tokens = sample(teacher, cond, generator=gen, **settings)
    save_image_grid(tokens_to_images(teacher, tokenizer, tokens), args.out)
    record = dict(teacher=name, teacher_ckpt=args.ckpt, n=n, seed=args.seed, device=str(rt.device), **record,
                  **settings)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {args.out} ({n} images, {settings['steps']} steps, guidance w={settings['guidance']:.2f})")


def main(argv):
    """python teacher.py sample ...  (training a teacher: python train.py teacher ...)"""
    if argv[:1] == ["train"]:
        raise UserError("teacher training is 'python train.py teacher ...' (the trainer sits above the models)")
    if argv[:1] != ["sample"]:
        raise UserError("usage: python teacher.py sample [--help]  (training: python train.py teacher)")
    main_sample(argv[1:])


if __name__ == "__main__":
    import sys

    from config import cli
    cli(lambda: main(sys.argv[1:]))
