"""The released architectures at full size, on random weights: what they cost on this machine.

``python bench.py full-size --presets maskbit-12bit,maskgit,meissonic,maskgen`` (or ``python full_size.py ...``):

* class-to-image presets (MaskBit, MaskGIT): random weights written in the released file layouts, loaded through
  ``--teacher-ckpt`` / ``--tokenizer-ckpt``; 2 distillation steps per batch size (fp32, then ``--amp --ema-cpu``) and
  one 16-step teacher sample of 2 images, each in a fresh process whose own peak RSS is reported, next to
  ``eval.py memory``'s computed table;
* ``meissonic``: the released transformer (the official constructor's config, 1,006,946,304 parameters), its VQ
  model and CLIP text tower built at full size; in a fresh process, one transformer forward on 64 x 64 tokens with
  a 77-token prompt (batch 1, then batch 2 = one CFG step), one text-encoder forward and one VQ decode to the
  image (1024 px), with their times and the process's peak RSS;
* ``maskgen`` / ``maskgen-xl``: the released generator (604.3 M / 1176.6 M parameters), TA-TiTok bl128 (391.0 M)
  and the ViT-L-14-336 text tower; in a fresh process, one generator forward on 128 ids with a 77-token prompt
  (batch 1, then 2), one text-encoder forward and one TA-TiTok decode to 256 px, with times and peak RSS.

Wall-clock figures depend on the machine: print ``python eval.py speed --teacher maskbit`` beside them.

Shapes: B batch, L text tokens (77), H x W token grid (64 x 64).
"""
import json
import os
import subprocess
import sys
import time

import torch

from config import ArgumentParser, UserError, check_range, cli, get_preset
from eval import memory_table
from maskgen import MaskGenVQ
from tatitok import TATiTok
from teacher import build_teacher
from text_encoder import CLIPTextEncoder, open_clip_config
from tokenizer import build_tokenizer
from vq_model import VQModel

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------------------------------------------
# Class-to-image: released file layouts, short distillations, a teacher sample.
# ----------------------------------------------------------------------------------------------------------------
# A child's own peak RSS (KiB on Linux), printed as its last stderr line whatever way the script ends.
PEAK_RSS = ("import resource, runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_path(sys.argv[0], "
            "run_name='__main__')\nfinally:\n    print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF)"
            ".ru_maxrss, file=sys.stderr)")


def released_files(preset, folder, seed=0):
    """Random weights of a preset's full-size architecture, written in the released file layouts that
    --teacher-ckpt / --tokenizer-ckpt read: MaskBit ``.bin`` state dicts (the generator with its old ``token_emb``
    names), MaskGIT ``.pth`` (``model_state_dict`` + training fields), taming ``last.ckpt`` (Lightning
    ``state_dict`` with ``loss.*`` entries).  -> (teacher path, tokenizer path)."""
    p = get_preset(preset)
    torch.manual_seed(seed)
    teacher = build_teacher(p["family"], p["generator"]).state_dict()
    tokenizer = build_tokenizer(p["family"], p["tokenizer"]).state_dict()
    os.makedirs(folder, exist_ok=True)
    if p["family"] == "maskbit":
        teacher = {("token_emb." + k[len("input_proj."):] if k.startswith("input_proj.") else k): v
                   for k, v in teacher.items()}
        paths = os.path.join(folder, "pytorch_model_generator.bin"), os.path.join(folder, "pytorch_model_tokenizer.bin")
        torch.save(teacher, paths[0])
        torch.save(tokenizer, paths[1])
    else:
        paths = os.path.join(folder, "MaskGIT_ImageNet_256.pth"), os.path.join(folder, "last.ckpt")
        torch.save(dict(model_state_dict=teacher, iter=0, global_epoch=0), paths[0])
        torch.save(dict(state_dict=dict(tokenizer, **{"loss.logvar": torch.zeros(())}), epoch=0), paths[1])
    return paths


def run_measured(cmd):
    """Run a script in a fresh child -> (wall seconds, its own peak RSS in MiB)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS] + cmd, cwd=HERE, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise UserError(f"{' '.join(cmd[:3])} ... failed: {proc.stderr.strip().splitlines()[-2:]}")
    return wall, int(proc.stderr.split("peak_rss_kib")[-1].split()[0]) / 1024


def full_size(preset, batches, folder):
    """2 distillation steps at each batch, fp32 and with --amp --ema-cpu, plus one 16-step teacher sample of 2
    images, all through the normal command lines on the released layouts -> one JSON row each."""
    teacher_path, tokenizer_path = released_files(preset, folder)
    pair = ["--teacher", preset, "--teacher-ckpt", teacher_path, "--tokenizer-ckpt", tokenizer_path]
    for extra in ([], ["--amp", "--ema-cpu"]):
        for batch in batches:
            out = os.path.join(folder, f"distill_b{batch}{'_amp' if extra else ''}")
            seconds, peak = run_measured(["distill.py", *pair, "--steps", "2", "--batch-size", str(batch),
                                          "--log-every", "1", "--grid-every", "0", "--eval-n", "2",
                                          "--tune-temperature", "", "--device", "cpu", "--out", out, *extra])
            with open(os.path.join(out, "log.jsonl")) as f:
                log = [json.loads(line) for line in f]
            os.remove(os.path.join(out, "checkpoint.pt"))              # 5-9 GB each at full size
            print(json.dumps(dict(preset=preset, run="distill", batch_size=batch, flags=" ".join(extra),
                                  first_step_s=log[0]["seconds"], second_step_s=round(log[1]["seconds"] -
                                  log[0]["seconds"], 1), wall_s=round(seconds, 1), peak_rss_mib=round(peak))),
                  flush=True)
    seconds, peak = run_measured(["teacher.py", "sample", "--teacher", preset, "--ckpt", teacher_path,
                                  "--tokenizer-ckpt", tokenizer_path, "--n", "2", "--steps", "16", "--out",
                                  os.path.join(folder, "teacher.png")])
    print(json.dumps(dict(preset=preset, run="teacher sample, 2 images, 16 steps", wall_s=round(seconds, 1),
                          peak_rss_mib=round(peak))), flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Text-to-image: Meissonic's three models, one forward each, in a fresh process.
# ----------------------------------------------------------------------------------------------------------------
def timed(fn):
    t0 = time.perf_counter()
    with torch.no_grad():
        fn()
    return round(time.perf_counter() - t0, 2)


def meissonic_forward(preset="meissonic", seed=0):
    """Build the three released architectures on random weights and time one forward each -> a JSON row (run in
    a child by ``meissonic_row``, whose peak RSS is then the models' and the activations')."""
    p = get_preset(preset)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    transformer = build_teacher(p["family"], p["generator"]).eval()
    text = CLIPTextEncoder(**p["text_encoder"]).eval()
    vq = VQModel(**p["tokenizer"]).eval()
    build_s = round(time.perf_counter() - t0, 1)
    side, j = p["prompt"]["resolution"] // vq.factor, p["generator"]["joint_attention_dim"]
    length, vocab = p["text_encoder"]["max_position_embeddings"], p["text_encoder"]["vocab_size"]
    count = {name: sum(t.numel() for t in m.parameters()) for name, m in
             (("transformer", transformer), ("text_encoder", text), ("vqvae", vq))}

    def forward(b):
        ids = torch.randint(0, p["generator"]["codebook_size"], (b, side, side))
        micro = torch.tensor([[p["prompt"]["resolution"]] * 2 + [0, 0, p["prompt"]["aesthetic"]]] * b).float()
        return lambda: transformer(ids, torch.randn(b, length, j), torch.randn(b, j), micro)
    row = dict(preset=preset, parameters=count, gb_fp32={k: round(4 * v / 1e9, 3) for k, v in count.items()},
               build_s=build_s, image_px=p["prompt"]["resolution"], token_grid=[side, side],
               prompt_tokens=length)
    row["transformer_forward_b1_s"] = timed(forward(1))
    row["transformer_forward_b2_s"] = timed(forward(2))
    ids = torch.randint(0, vocab, (1, length))
    row["text_encoder_forward_s"] = timed(lambda: text(ids))
    row["vq_decode_s"] = timed(lambda: vq.decode(torch.randint(0, vq.codebook_size, (1, side, side))))
    print(json.dumps(row), flush=True)


def maskgen_forward(preset="maskgen", seed=0):
    """MaskGen's three released architectures on random weights (the generator, TA-TiTok bl128, open_clip's
    ViT-L-14-336 text tower), one forward each -> a JSON row: a generator pass on 128 ids with a 77-token prompt
    (batch 1, then 2 = one CFG step), a text-encoder pass, a TA-TiTok decode to 256 px (it reads the prompt too)."""
    p = get_preset(preset)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    generator, tokenizer = MaskGenVQ(**p["generator"]).eval(), TATiTok(**p["tokenizer"]).eval()
    text = CLIPTextEncoder(**open_clip_config(**p["text_encoder"])).eval()
    build_s = round(time.perf_counter() - t0, 1)
    n, k, text_cfg = p["generator"]["num_latent_tokens"], p["generator"]["codebook_size"], p["text_encoder"]["text_cfg"]
    length, width = text_cfg["context_length"], text_cfg["width"]
    count = {name: sum(t.numel() for t in m.parameters()) for name, m in
             (("generator", generator), ("text_encoder", text), ("tokenizer", tokenizer))}

    def forward(b):
        ids = torch.randint(0, k + 1, (b, n))
        return lambda: generator(ids, torch.randn(b, length, width), torch.randn(b, 1, width))
    row = dict(preset=preset, parameters=count, gb_fp32={k: round(4 * v / 1e9, 3) for k, v in count.items()},
               build_s=build_s, image_px=p["tokenizer"]["crop_size"], tokens=n, prompt_tokens=length)
    row["generator_forward_b1_s"] = timed(forward(1))
    row["generator_forward_b2_s"] = timed(forward(2))
    row["text_encoder_forward_s"] = timed(lambda: text(torch.randint(0, text_cfg["vocab_size"], (1, length))))
    row["tatitok_decode_s"] = timed(lambda: tokenizer.decode_tokens(torch.randint(0, k, (1, n)),
                                                                    torch.randn(1, length, width)))
    print(json.dumps(row), flush=True)


def meissonic_row(preset):
    """meissonic_forward (or maskgen_forward) in a fresh child, with that child's own peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, "full_size.py", TEXT_TO_IMAGE, preset], cwd=HERE,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"full_size.py {preset} failed: {proc.stderr.strip().splitlines()[-2:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row.update(wall_s=round(time.perf_counter() - t0, 1),
               peak_rss_mib=round(int(proc.stderr.split("peak_rss_kib")[-1].split()[0]) / 1024))
    print(json.dumps(row), flush=True)


TEXT_TO_IMAGE = "meissonic-forward"


def main(argv):
    if argv[:1] == [TEXT_TO_IMAGE]:                                    # the child of meissonic_row
        return (maskgen_forward if get_preset(argv[1])["family"] == "maskgen" else meissonic_forward)(argv[1])
    parser = ArgumentParser(prog="bench.py full-size", description="full-size architectures on random weights")
    parser.add_argument("--presets", default="maskbit-12bit,maskgit,meissonic", help="released presets, comma "
                        "separated")
    parser.add_argument("--batches", default="1,2", help="distillation batch sizes to measure")
    parser.add_argument("--folder", default="/tmp/dimo-full-size", help="where files and runs go (~15 GB)")
    args = parser.parse_args(argv)
    presets = args.presets.split(",")
    for name in presets:
        if "bundled" in get_preset(name):
            raise UserError(f"--presets {name}: a bundled toy preset; name released ones (maskbit-12bit,maskgit)")
    try:
        batches = [check_range("--batches", int(b), low=1) for b in args.batches.split(",")]
    except ValueError:
        raise UserError(f"--batches '{args.batches}' must be comma-separated integers, e.g. 1,2") from None
    for name in presets:
        if get_preset(name)["family"] in ("meissonic", "maskgen"):
            meissonic_row(name)
            continue
        print(json.dumps(memory_table(name)), flush=True)
        full_size(name, batches, os.path.join(args.folder, name))


if __name__ == "__main__":
    cli(lambda: main(sys.argv[1:]))
