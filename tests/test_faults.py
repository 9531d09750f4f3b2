"""Runs that survive faults: SIGKILL and --resume, a kill during a checkpoint write, NaN/Inf in the loss."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import distill
from checkpoints import load_checkpoint
from config import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = ["--teacher", "toy-vocab", "--vocab", "3", "--length", "3", "--batch-size", "32", "--eval-n", "500",
       "--log-every", "1", "--eval-every", "1000", "--mdm-steps", "50", "--device", "cpu"]


def run_cli(args, **kw):
    return subprocess.run([sys.executable, "distill.py", *args], cwd=ROOT, capture_output=True, text=True, **kw)


def weights(path):
    ckpt = load_checkpoint(os.path.join(path, "checkpoint.pt"))
    return ckpt, {k: ckpt[k] for k in ("generator", "ema", "aux")}


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    steps = ["--steps", "60", "--save-every", "20"]
    straight = run_cli(TOY + steps + ["--out", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr
    # the same run, killed with SIGKILL once its step-20 checkpoint exists, then resumed
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "distill.py", *TOY, *steps, "--out", str(killed_dir)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed_dir / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved_step = load_checkpoint(str(ckpt))["step"]
    assert saved_step < 60, "the run must have been killed before its end"
    resumed = run_cli(["--resume", str(killed_dir)])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {killed_dir} at step {saved_step}" in resumed.stdout
    a, wa = weights(tmp_path / "straight")
    b, wb = weights(killed_dir)
    assert a["step"] == b["step"] == 60
    for key in wa:                                           # bitwise: same seed, same device, same result
        for name in wa[key]:
            assert torch.equal(wa[key][name], wb[key][name]), f"{key}.{name} differs after kill + resume"
    ma, mb = (json.load(open(d / "metrics.json")) for d in (tmp_path / "straight", killed_dir))
    assert ma["tv_generator"] == mb["tv_generator"]


WRITER = """
import sys, torch
sys.path.insert(0, {root!r})
from checkpoints import save_checkpoint
save_checkpoint({{"step": 1, "w": torch.zeros(10)}}, {path!r})
print("first", flush=True)
save_checkpoint({{"step": 2, "w": torch.zeros(150_000_000)}}, {path!r})   # ~600 MB: slow enough to be killed
"""


def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=ROOT, path=path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "first"
    deadline = time.time() + 60
    while time.time() < deadline and not any(f.startswith(".tmp-") for f in os.listdir(tmp_path)):
        time.sleep(0.001)
    time.sleep(0.05)                                        # somewhere inside the big write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 1 and ckpt["w"].numel() == 10, "the previous checkpoint must stay intact and loadable"


@pytest.mark.parametrize("skip", [False, True])
def test_nan_stops_with_step_and_quantity_or_skips(tmp_path, monkeypatch, skip):
    real = distill.generator_loss
    calls = {"n": 0}

    def poisoned(run, labels, x_init, sigma):
        loss, stats = real(run, labels, x_init, sigma)
        calls["n"] += 1
        return (loss * float("nan"), stats) if calls["n"] == 6 else (loss, stats)   # step index 5

    monkeypatch.setattr(distill, "generator_loss", poisoned)
    args = TOY + ["--steps", "8", "--save-every", "2", "--out", str(tmp_path)] + (["--skip-nonfinite"] if skip else [])
    if not skip:
        with pytest.raises(UserError, match="step 5: generator loss is not finite") as e:
            distill.main(args)
        assert "\n" not in str(e.value)
        assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["step"] == 4, "the last good checkpoint stays"
    else:
        distill.main(args)
        log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
        assert [r["step"] for r in log if r.get("skipped")] == [6]
        assert json.load(open(tmp_path / "metrics.json"))["tv_generator"] < 1


def test_image_run_resume_is_bitwise(tmp_path):
    """The image path (MaskBit teacher, tokenizer, CFG, per-batch r_init) resumes bitwise too: 3 steps, then
    --resume to 6, equals 6 steps straight."""
    common = ["--teacher", "maskbit", "--batch-size", "4", "--eval-n", "10", "--tune-temperature", "",
              "--r-init", "0.3:0.9", "--save-every", "3", "--device", "cpu", "--cache", str(tmp_path / "cache"),
              "--lr-decay", "0"]  # a decaying lr follows --steps, which this test raises at the resume
    distill.main(common + ["--steps", "6", "--out", str(tmp_path / "straight")])
    distill.main(common + ["--steps", "3", "--out", str(tmp_path / "split")])
    distill.main(["--resume", str(tmp_path / "split"), "--steps", "6"])
    (a, wa), (b, wb) = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert a["step"] == b["step"] == 6
    for key in wa:
        for name in wa[key]:
            assert torch.equal(wa[key][name], wb[key][name]), f"{key}.{name} differs after resume"
