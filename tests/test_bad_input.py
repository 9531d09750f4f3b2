"""Bad input, clear errors: every CLI rejects impossible values with one line on stderr and exit code 2, and never
writes partial output over a good result.

Most cases run each script's ``main`` in this process through the same ``config.cli`` wrapper its ``__main__`` uses
(an interpreter per case would cost minutes); a few run as real subprocesses to pin the whole path."""
import hashlib
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from config import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = ["distill.py", "--teacher", "toy-vocab", "--vocab", "3", "--length", "2", "--steps", "2", "--mdm-steps", "20"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    np.save(d / "negative.npy", np.array([[0.5, 0.6], [0.2, -0.3]]))
    np.save(d / "unnormalised.npy", np.full((3, 3), 0.2))
    np.save(d / "ragged.npy", np.full((2, 3), 1 / 6))
    np.save(d / "scalar.npy", np.array(1.0))
    (d / "text.npy").write_text("not an array")
    good = torch.load(os.path.join(ROOT, "assets", "maskbit_toy_teacher.pt"), weights_only=True)
    data = open(os.path.join(ROOT, "assets", "maskbit_toy_teacher.pt"), "rb").read()
    (d / "truncated.pt").write_bytes(data[: len(data) // 3])
    (d / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save(good["model"], d / "toy_teacher_plain.pt")              # right preset, plain state dict
    for c, size in (("a", 8), ("b", 16)):                               # an image folder with mixed sizes
        (d / "mixed" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(d / "mixed" / c / "0.png")
    (d / "empty").mkdir()
    for c in range(10):                                                 # 10 classes of 16x16: wrong size for the preset
        (d / "small" / f"c{c}").mkdir(parents=True)
        for k in range(2):                                              # file 0 of each class is held out
            Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(d / "small" / f"c{c}" / f"{k}.png")
    import distill
    distill.main(["--teacher", "maskbit", "--steps", "1", "--batch-size", "2", "--eval-n", "10", "--tune-temperature",
                  "", "--device", "cpu", "--out", str(d / "dimo"), "--cache", str(d / "cache")])  # for soft_refine.py
    return d


SOFT = ["soft_refine.py", "--init", "{d}/dimo", "--out", "{d}/soft", "--steps", "1"]
CASES = [  # (id, argv with {d} for the fixture folder, a fragment the message must contain)
    ("r_init 1", TOY + ["--r-init", "1.0"], "--r-init = 1.0 is out of range"),
    ("r_init negative", TOY + ["--r-init", "-0.1"], "--r-init = -0.1"),
    ("r_init text", TOY + ["--r-init", "most"], "--r-init 'most'"),
    ("r_init range reversed", TOY + ["--r-init", "0.9:0.1"], "low:high"),
    ("sigma_init 1", TOY + ["--sigma-init", "1"], "--sigma-init = 1.0"),
    ("sigma_init negative", TOY + ["--sigma-init", "-0.2"], "--sigma-init"),
    ("steps 0", TOY + ["--steps", "0"], "--steps = 0"),
    ("steps negative", TOY + ["--steps", "-3"], "--steps = -3"),
    ("batch 0", TOY + ["--batch-size", "0"], "--batch-size = 0"),
    ("lr 0", TOY + ["--lr", "0"], "--lr = 0.0"),
    ("unknown teacher", ["distill.py", "--teacher", "maskbat"], "unknown teacher preset 'maskbat'"),
    ("unknown divergence", TOY + ["--divergence", "kl"], "unknown divergence 'kl'"),
    ("beta nan", TOY + ["--divergence", "jeffreys", "--beta", "nan"], "--beta nan"),
    ("beta inf", TOY + ["--divergence", "jeffreys", "--beta", "inf"], "--beta inf"),
    ("beta 3", TOY + ["--divergence", "jeffreys", "--beta", "3"], "--beta 3.0"),
    ("temperature 0", TOY + ["--gen-temperature", "0"], "--gen-temperature = 0.0"),
    ("train temperature 0", TOY + ["--train-temperature", "0"], "--train-temperature = 0.0"),
    ("gen sigma of 1 or more", TOY + ["--gen-sigma", "1"], "--gen-sigma = 1"),
    ("tune sigma of 1 or more", TOY + ["--tune-sigma", "0.05,1.3"], "--tune-sigma = 1.3"),
    ("recall margin negative", TOY + ["--recall-margin", "-0.1"], "--recall-margin = -0.1"),
    ("tune temperature negative", TOY + ["--tune-temperature", "0.5,-1"], "--tune-temperature = -1.0"),
    ("label smoothing 1", TOY + ["--label-smoothing", "1"], "--label-smoothing = 1.0"),
    ("grad accum 0", TOY + ["--grad-accum", "0"], "--grad-accum = 0"),
    ("lr decay above 1", TOY + ["--lr-decay", "1.5"], "--lr-decay = 1.5"),
    ("aux updates 0", TOY + ["--aux-updates", "0"], "--aux-updates = 0"),
    ("monitor-n on toy-vocab", TOY + ["--monitor-n", "100"], "--monitor-n is for image teachers"),
    ("monitor temperature 0", ["distill.py", "--teacher", "maskbit", "--monitor-n", "10", "--monitor-temperature",
                               "0"], "--monitor-temperature = 0.0"),
    ("normalisation", TOY + ["--normalisation", "median"], "invalid choice: 'median'"),
    ("not a number", TOY + ["--lr", "fast"], "invalid float value: 'fast'"),
    ("joint negative", TOY + ["--joint", "{d}/negative.npy"], "negative or non-finite"),
    ("joint not summing to 1", TOY + ["--joint", "{d}/unnormalised.npy"], "sums to 1.8"),
    ("joint wrong shape", TOY + ["--joint", "{d}/ragged.npy"], "has shape (2, 3)"),
    ("joint scalar", TOY + ["--joint", "{d}/scalar.npy"], "has shape ()"),
    ("joint not npy", TOY + ["--joint", "{d}/text.npy"], "not a readable .npy"),
    ("joint missing", TOY + ["--joint", "{d}/nope.npy"], "does not exist"),
    ("vocab too large", TOY + ["--vocab", "64", "--length", "8"], "V^L <= 2^20"),
    ("cuda absent", TOY + ["--device", "cuda"], "torch.cuda.is_available() is False"),
    ("resume missing", ["distill.py", "--resume", "{d}/no_run"], "does not exist"),
    ("teacher ckpt missing", ["distill.py", "--teacher", "maskbit-toy", "--teacher-ckpt", "{d}/no.pt",
                              "--tokenizer-ckpt", "{d}/no.pt"], "does not exist"),
    ("only one ckpt", ["distill.py", "--teacher", "maskbit-toy", "--teacher-ckpt", "{d}/no.pt"], "pass both"),
    ("released without ckpt", ["distill.py", "--teacher", "maskgit"], "has no bundled weights"),
    ("ckpt of another preset", ["distill.py", "--teacher", "maskbit-12bit", "--teacher-ckpt",
                                "{d}/toy_teacher_plain.pt", "--tokenizer-ckpt", "{d}/toy_teacher_plain.pt"],
     "does not fit preset 'maskbit-12bit'"),
    ("own ckpt of another preset", ["distill.py", "--teacher", "maskbit-12bit", "--teacher-ckpt",
                                    "{root}/assets/maskbit_toy_teacher.pt", "--tokenizer-ckpt",
                                    "{root}/assets/maskbit_toy_tokenizer.pt"], "belongs to preset 'maskbit-toy'"),
    ("tokenizer as teacher", ["distill.py", "--teacher", "maskbit-toy", "--teacher-ckpt",
                              "{root}/assets/maskbit_toy_tokenizer.pt", "--tokenizer-ckpt",
                              "{root}/assets/maskbit_toy_tokenizer.pt"], "is a tokenizer checkpoint, not a teacher"),
    ("truncated ckpt", ["distill.py", "--teacher", "maskbit-toy", "--teacher-ckpt", "{d}/truncated.pt",
                        "--tokenizer-ckpt", "{root}/assets/maskbit_toy_tokenizer.pt"], "truncated or corrupted"),
    ("corrupted ckpt", ["teacher.py", "sample", "--teacher", "maskbit-toy", "--ckpt", "{d}/garbage.pt",
                        "--tokenizer-ckpt", "{root}/assets/maskbit_toy_tokenizer.pt"], "truncated or corrupted"),
    ("sample temperature 0", ["teacher.py", "sample", "--teacher", "maskbit-toy", "--temperature", "0"],
     "--temperature = 0.0"),
    ("sm-temp 0", ["teacher.py", "sample", "--teacher", "maskbit-toy", "--sm-temp", "0"], "--sm-temp = 0.0"),
    ("halton counts undefined", ["teacher.py", "sample", "--teacher", "maskbit-toy", "--step-counts", "halton",
                                 "--steps", "128"], "undefined for 128 steps over 128 entries"),
    ("full-size toy preset", ["bench.py", "full-size", "--presets", "maskbit-toy"], "a bundled toy preset"),
    ("full-size batches", ["bench.py", "full-size", "--batches", "1,x"], "--batches '1,x'"),
    ("sweep sets the joint", ["bench.py", "sweep", "--joint", "j.npy"], "sets --teacher, --joint and --out itself"),
    ("bench command", ["bench.py", "steps"], "usage: python bench.py"),
    ("draws no run", ["bench.py", "draws", "--runs", "{d}/dimo,{d}/no_run"], "no_run: not a finished run"),
    ("draws one draw", ["bench.py", "draws", "--runs", "{d}/dimo", "--draws", "1"], "--draws = 1"),
    ("draws sigma 1", ["bench.py", "draws", "--runs", "{d}/dimo", "--sigma", "1"], "--sigma = 1.0"),
    ("sample steps 0", ["teacher.py", "sample", "--teacher", "maskbit-toy", "--steps", "0"], "--steps = 0"),
    ("sample label out of range", ["teacher.py", "sample", "--teacher", "maskbit-toy", "--labels", "3,12"],
     "outside [0, 9]"),
    ("sample n 0", ["teacher.py", "sample", "--teacher", "maskbit-toy", "--n", "0"], "--n = 0"),
    ("tokenizer data missing", ["train.py", "tokenizer", "--data", "{d}/no_folder", "--out", "{d}/t.pt"],
     "does not exist or is not a folder"),
    ("tokenizer data empty", ["train.py", "tokenizer", "--data", "{d}/empty", "--out", "{d}/t.pt"],
     "no class sub-folders"),
    ("tokenizer mixed sizes", ["train.py", "tokenizer", "--data", "{d}/mixed", "--out", "{d}/t.pt"],
     "mixed sizes"),
    ("teacher train mixed sizes", ["train.py", "teacher", "--data", "{d}/mixed", "--tokenizer",
                                   "{root}/assets/maskbit_toy_tokenizer.pt", "--out", "{d}/g.pt"], "mixed sizes"),
    ("teacher train wrong image size", ["train.py", "teacher", "--data", "{d}/small", "--tokenizer",
                                        "{root}/assets/maskbit_toy_tokenizer.pt", "--out", "{d}/g.pt"],
     "give 16 tokens but preset 'maskbit-toy' expects 64"),
    ("eval features missing", ["eval.py", "teacher", "--teacher", "maskbit-toy", "--features", "{d}/no.pt"],
     "does not exist"),
    ("speed batch 0", ["eval.py", "speed", "--teacher", "maskbit-toy", "--batch-size", "0"], "--batch-size = 0"),
    ("generator sample no run", ["generator.py", "sample", "--run", "{d}/no_run"], "does not exist"),
    ("generator sample sigma 1", ["generator.py", "sample", "--run", "{d}/dimo", "--sigma", "1", "--out",
                                  "{d}/g.png"], "--sigma = 1.0"),
    ("generator sample temperature 0", ["generator.py", "sample", "--run", "{d}/dimo", "--temperature", "0",
                                        "--out", "{d}/g.png"], "--temperature = 0"),
    ("soft init missing", ["soft_refine.py", "--init", "{d}/no_run"], "make one with: python distill.py"),
    ("soft resume missing", ["soft_refine.py", "--resume", "{d}/no_run"], "does not exist"),
    ("soft relax", SOFT + ["--relax", "gumbel"], "--relax 'gumbel'"),
    ("soft backbone", SOFT + ["--d-backbone", "student"], "--d-backbone 'student'"),
    ("soft r_max", SOFT + ["--r-max", "1.5"], "--r-max = 1.5"),
    ("soft w_gan negative", SOFT + ["--w-gan", "-1"], "--w-gan = -1.0"),
    ("soft nothing to train", SOFT + ["--w-gan", "0", "--w-dimo", "0"], "leave nothing to train"),
    ("soft lr_d 0", SOFT + ["--lr-d", "0"], "--lr-d = 0.0"),
    ("soft layer too deep", SOFT + ["--d-layers", "2,9"], "blocks 1 ... 4"),
    ("soft layer text", SOFT + ["--d-layers", "last"], "--d-layers 'last'"),
    ("soft data missing", SOFT + ["--data", "{d}/no_folder"], "does not exist or is not a folder"),
    ("soft data wrong size", SOFT + ["--data", "{d}/small", "--cache", "{d}/cache"], "expects 32x32"),
    ("soft reward unknown", SOFT + ["--reward", "hps"], "--reward 'hps' is not a reward"),
    ("soft reward missing function", SOFT + ["--reward", "rewards:nope"], "module 'rewards' has no 'nope'"),
    ("soft reward not callable", SOFT + ["--reward", "rewards:REWARD_CLASSIFIER"], "is a str, not a callable"),
    ("soft reward not a classifier", SOFT + ["--reward", "{root}/assets/eval_features.pt"],
     "not a reward-classifier checkpoint"),
    ("soft w_reward negative", SOFT + ["--reward", "classifier", "--w-reward", "-1"], "--w-reward = -1.0"),
    ("tteo unknown command", ["tteo.py", "smaple"], "unknown command 'smaple'"),
    ("teacher train moved", ["teacher.py", "train", "--data", "toy"], "is 'python train.py teacher ...'"),
    ("tokenizer train moved", ["tokenizer.py", "train"], "training is 'python train.py tokenizer ...'"),
    ("train no command", ["train.py"], "usage: python train.py {tokenizer,teacher,vq,text,t2i}"),
    ("tteo no run", ["tteo.py", "sample", "--run", "{d}/no_run"], "does not exist"),
    ("tteo best-of 0", ["tteo.py", "sample", "--run", "{d}/dimo", "--best-of", "0"], "--best-of = 0"),
    ("tteo iters negative", ["tteo.py", "sample", "--run", "{d}/dimo", "--iters", "-1"], "--iters = -1"),
    ("tteo lr negative", ["tteo.py", "sample", "--run", "{d}/dimo", "--lr", "-0.2"], "--lr = -0.2"),
    ("tteo soft temperature 0", ["tteo.py", "sample", "--run", "{d}/dimo", "--soft-temperature", "0"],
     "--soft-temperature = 0.0"),
    ("tteo reward module missing", ["tteo.py", "sample", "--run", "{d}/dimo", "--reward", "nomod:fn"],
     "cannot import module 'nomod'"),
    ("tteo select weight", ["tteo.py", "sample", "--run", "{d}/dimo", "--select", "classifier:inf"], "finite"),
    ("tteo table grid text", ["tteo.py", "table", "--run", "{d}/dimo", "--best-of", "1,a"], "take integers"),
    ("train-reward steps 0", ["tteo.py", "train-reward", "--steps", "0", "--out", "{d}/r.pt"], "--steps = 0"),
    ("train-reward data missing", ["tteo.py", "train-reward", "--data", "{d}/no_folder", "--out", "{d}/r.pt"],
     "does not exist or is not a folder"),
]


SUBPROCESS = {"r_init 1", "ckpt of another preset", "corrupted ckpt", "tokenizer mixed sizes", "tteo unknown command"}


def run_main(argv, capsys):
    """script.py args... -> (exit code, stderr), in this process."""
    main = importlib.import_module(argv[0][:-3]).main
    with pytest.raises(SystemExit) as e:
        cli(lambda: main(argv[1:]))
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line(case, files, capsys):
    name, argv, fragment = case
    argv = [a.format(d=files, root=ROOT) for a in argv]
    if name in SUBPROCESS:
        run = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
        code, err = run.returncode, run.stderr
    else:
        code, err = run_main(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]


def digest(folder):
    return {f: hashlib.sha256(open(os.path.join(folder, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(folder))}


def test_failed_run_leaves_good_result_alone(tmp_path):
    out = tmp_path / "run"
    good = subprocess.run([sys.executable, *TOY, "--out", str(out), "--eval-n", "300"], cwd=ROOT, capture_output=True,
                          text=True)
    assert good.returncode == 0, good.stderr
    before = digest(out)
    for bad in (["--r-init", "2"], ["--joint", "missing.npy"], ["--beta", "nan", "--divergence", "jeffreys"]):
        run = subprocess.run([sys.executable, *TOY, "--out", str(out), *bad], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 2
    assert digest(out) == before
