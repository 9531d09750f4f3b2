"""Loading: converters on state dicts with the real key names, strictness, unsafe and broken files."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import config
from checkpoints import load_checkpoint, load_model, own_checkpoint, save_checkpoint
from config import UserError
from teacher import build_teacher
from tokenizer import build_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden")


@pytest.fixture
def presets(monkeypatch):
    """Two small presets shaped like the golden fixtures, registered for the duration of a test."""
    fx = {n: torch.load(os.path.join(GOLDEN, n + ".pt"), weights_only=True)
          for n in ("maskbit_lfqbert", "maskbit_tokenizer", "maskgit_transformer", "maskgit_vqgan")}
    mb = dict(family="maskbit", generator=fx["maskbit_lfqbert"]["config"], tokenizer=fx["maskbit_tokenizer"]["config"],
              sampler={}, released={})
    mg = dict(family="maskgit", generator=fx["maskgit_transformer"]["config"], sampler={}, released={},
              tokenizer={k: v for k, v in fx["maskgit_vqgan"]["config"].items() if k != "lossconfig"})
    monkeypatch.setitem(config.PRESETS, "test-maskbit", mb)
    monkeypatch.setitem(config.PRESETS, "test-maskgit", mg)
    return fx


def save(tmp_path, name, obj):
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


def test_released_maskbit_generator_token_emb_names(presets, tmp_path, capsys):
    sd = dict(presets["maskbit_lfqbert"]["state_dict"])
    sd = {("token_emb." + k[len("input_proj."):] if k.startswith("input_proj.") else k): v for k, v in sd.items()}
    assert "token_emb.weight" in sd and "input_proj.weight" not in sd
    model, _ = load_model("teacher", "test-maskbit", save(tmp_path, "g.bin", sd), build_teacher, verbose=True)
    assert torch.equal(model.input_proj.weight, presets["maskbit_lfqbert"]["state_dict"]["input_proj.weight"])
    assert "renamed 'token_emb.*'" in capsys.readouterr().out


def test_maskgit_model_state_dict_wrapper(presets, tmp_path):
    raw = dict(model_state_dict=presets["maskgit_transformer"]["state_dict"], iter=1000, global_epoch=3,
               optimizer_state_dict=dict(state={}, param_groups=[dict(lr=1e-4)]))
    model, _ = load_model("teacher", "test-maskgit", save(tmp_path, "m.pth", raw), build_teacher)
    assert torch.equal(model.bias, presets["maskgit_transformer"]["state_dict"]["bias"])


def test_taming_lightning_state_dict_drops_loss_keys(presets, tmp_path):
    sd = dict(presets["maskgit_vqgan"]["state_dict"])
    sd["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    sd["loss.perceptual_loss.net.slice1.0.weight"] = torch.zeros(2)
    raw = dict(state_dict=sd, epoch=4, global_step=123, **{"pytorch-lightning_version": "1.0.8"})
    model, _ = load_model("tokenizer", "test-maskgit", save(tmp_path, "last.ckpt", raw), build_tokenizer)
    assert torch.equal(model.quantize.embedding.weight, sd["quantize.embedding.weight"])


def test_maskbit_tokenizer_plain_with_buffers(presets, tmp_path):
    sd = presets["maskbit_tokenizer"]["state_dict"]
    model, _ = load_model("tokenizer", "test-maskbit", save(tmp_path, "t.bin", sd), build_tokenizer)
    assert torch.equal(model.quantize.codebook, sd["quantize.codebook"])


def test_mismatch_is_one_line_naming_file_preset_and_keys(presets, tmp_path):
    path = save(tmp_path, "wrong.bin", presets["maskgit_transformer"]["state_dict"])
    with pytest.raises(UserError) as e:
        load_model("teacher", "test-maskbit", path, build_teacher)
    msg = str(e.value)
    assert "\n" not in msg and "wrong.bin" in msg and "test-maskbit" in msg and "missing" in msg and "class_emb" in msg
    sd = dict(presets["maskbit_lfqbert"]["state_dict"])
    sd["input_proj.weight"] = torch.zeros(64, 10)
    with pytest.raises(UserError, match="shape mismatch.*input_proj.weight"):
        load_model("teacher", "test-maskbit", save(tmp_path, "shape.bin", sd), build_teacher)


def test_own_checkpoint_of_other_kind_or_preset(presets, tmp_path):
    model = build_teacher("maskbit", presets["maskbit_lfqbert"]["config"])
    path = str(tmp_path / "own.pt")
    save_checkpoint(own_checkpoint("teacher", "test-maskbit", presets["maskbit_lfqbert"]["config"], model), path)
    assert load_model("teacher", "test-maskbit", path, build_teacher)[1]["kind"] == "teacher"
    with pytest.raises(UserError, match="teacher checkpoint, not a tokenizer"):
        load_model("tokenizer", "test-maskbit", path, build_tokenizer)
    with pytest.raises(UserError, match="belongs to preset 'test-maskbit'"):
        load_model("teacher", "test-maskgit", path, build_teacher)


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_refused_without_running(tmp_path):
    marker = tmp_path / "payload_ran"
    Payload.marker = str(marker)
    path = str(tmp_path / "evil.pt")
    torch.save({"model": Payload()}, path)
    with pytest.raises(UserError, match="refused without being run"):
        load_checkpoint(path)
    assert not marker.exists(), "the pickle payload must not have executed"
    with open(path + ".raw", "wb") as f:                                # a bare pickle, not a torch zip file
        pickle.dump(Payload(), f)
    with pytest.raises(UserError):
        load_checkpoint(path + ".raw")
    assert not marker.exists()


def test_truncated_and_missing_files(tmp_path):
    path = str(tmp_path / "ok.pt")
    save_checkpoint({"w": torch.arange(10000.0)}, path)
    data = open(path, "rb").read()
    with open(tmp_path / "cut.pt", "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupted"):
        load_checkpoint(str(tmp_path / "cut.pt"))
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.pt"))
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(10000.0))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")], "no temp file left behind"


def test_random_bytes_are_reported_as_corrupted(tmp_path):
    """Random bytes reach the legacy unpickler's stack code, which fails in many ways (IndexError, KeyError ...);
    every one must become the same one-line error, whatever the bytes."""
    rng = np.random.default_rng(0)
    for i in range(200):
        path = tmp_path / f"garbage{i}.pt"
        path.write_bytes(rng.bytes(int(rng.integers(1, 4096))))
        with pytest.raises(UserError, match="truncated or corrupted|unsafe|refused"):
            load_checkpoint(str(path))


def test_cli_error_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a checkpoint")
    out = subprocess.run([sys.executable, "teacher.py", "sample", "--teacher", "maskbit-12bit", "--ckpt", str(bad),
                          "--tokenizer-ckpt", str(bad), "--out", str(tmp_path / "g.png")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.bin" in lines[0], out.stderr
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("preset", ["test-maskbit", "test-maskgit"])
def test_full_size_benchmark_files_load_through_the_normal_path(presets, preset, tmp_path):
    """bench.py full-size writes random weights in the released layouts; --teacher-ckpt / --tokenizer-ckpt
    read them back strictly and unchanged (here at the golden fixtures' sizes)."""
    from full_size import released_files
    from teacher import load_pair
    teacher_path, tokenizer_path = released_files(preset, str(tmp_path))
    raw = torch.load(teacher_path, weights_only=True)
    assert ("token_emb.weight" in raw) if preset == "test-maskbit" else ("model_state_dict" in raw)
    teacher, tokenizer, _ = load_pair(preset, teacher_path, tokenizer_path, verbose=False)
    torch.manual_seed(0)
    p = config.PRESETS[preset]
    fresh = build_teacher(p["family"], p["generator"]).state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in teacher.state_dict().items())
