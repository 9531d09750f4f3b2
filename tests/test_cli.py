"""Every README command, in a small form: the default image distillation, sampling the distilled generator, the
evaluation commands and the speed and memory benchmarks."""
import json
import os

import numpy as np
import pytest
import torch

import distill
import eval as evaluation
import generator
import tasks
import tokenizer
from config import PRESETS


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("maskbit_run")
    distill.main(["--teacher", "maskbit", "--steps", "3", "--batch-size", "8", "--eval-n", "60",
                  "--tune-temperature", "0.5,1.0", "--save-samples", "5", "--grid-every", "3", "--device", "cpu",
                  "--out", str(out), "--cache", str(out / "cache"), "--monitor-n", "30", "--monitor-temperature", "0.5",
                  "--log-every", "1", "--eval-every", "2"])
    return out


def test_default_image_distillation_outputs(image_run):
    m = json.load(open(image_run / "metrics.json"))
    for key in ("fid_generator", "fid_teacher", "fid_teacher_1step", "class_acc_generator", "class_acc_teacher"):
        assert isinstance(m[key], float), key
    assert m["gen_temperature"] in (0.5, 1.0) and set(map(float, m["temperature_tuning_fid"])) == {0.5, 1.0}
    samples, labels = np.load(image_run / "samples.npy"), np.load(image_run / "labels.npy")
    assert samples.shape == (5, 32, 32, 3) and samples.dtype == np.uint8 and labels.tolist() == [0, 1, 2, 3, 4]
    assert (image_run / "samples.png").exists() and (image_run / "grid_000003.png").exists()
    assert m["teacher_sampler"]["steps"] == 16 and m["ranks_identical"]
    assert set(m["seconds_evaluation"]) >= {"temperature and sigma tuning", "generator samples", "teacher samples",
                                            "teacher metrics", "generator metrics"}
    toy = PRESETS["maskbit-toy"]["distill"]
    grid = {toy["sigma_init"], *map(float, toy["tune_sigma"].split(","))}                   # the preset's + sigma_init
    assert set(map(float, m["sigma_tuning"])) == grid and min(grid) <= m["gen_sigma"] <= max(grid)
    assert m["teacher_recall_draws"][0] == m["teacher"]["recall"] and len(m["teacher_recall_draws"]) == 3
    config = json.load(open(image_run / "config.json"))
    for key in ("train_temperature", "sigma_init"):                     # the toy's (issue 26), not the paper's 1, 0.1
        assert config[key] == toy[key] != {"train_temperature": 1.0, "sigma_init": 0.1}[key], key
        assert config["defaults_used"][key] == "preset maskbit-toy", key
    assert m["recall_floor"] == pytest.approx(np.mean(m["teacher_recall_draws"]) - 0.02, abs=1e-4)
    sigmas = sorted(grid)
    assert m["gen_sigma"] == tasks.sigma_for_recall(sigmas, [m["sigma_tuning"][str(s)]["recall"] for s in sigmas],
                                                    m["recall_floor"])[0]
    assert generator.load_run(str(image_run))[2]["gen_sigma"] == m["gen_sigma"]            # what sampling then uses
    assert generator.load_run(str(image_run), sigma=0.02)[2]["gen_sigma"] == 0.02
    assert m["seconds_training"] > 0 and m["seconds_evaluation_total"] >= sum(m["seconds_evaluation"].values()) - 1
    assert m["speed_teacher_images_per_s"] > 0 and m["speed_reference_amp"] is False
    log = [json.loads(line) for line in open(image_run / "log.jsonl")]
    assert [r["step"] for r in log if "fid_30" in r] == [1, 3]               # --monitor-n 30, every 2 steps and the end
    assert all(r["fid_30"] > 0 and 0 <= r["class_acc_30"] <= 1 for r in log if "fid_30" in r)


def test_sigma_for_recall_meets_the_floor_on_the_fitted_line():
    """The sigma where the least-squares line of recall over sigma meets the floor, within the grid [min, max]."""
    sigmas = [0.03, 0.05, 0.07, 0.1]
    line = [0.5 + 4 * s for s in sigmas]                                 # recall 0.62, 0.70, 0.78, 0.90
    assert tasks.sigma_for_recall(sigmas, line, 0.74) == (0.06, dict(slope=4.0, intercept=0.5))
    assert tasks.sigma_for_recall(sigmas, line, 0.50)[0] == 0.03   # the line is above it everywhere
    assert tasks.sigma_for_recall(sigmas, line, 0.95)[0] == 0.1    # below it even at the grid's top
    assert tasks.sigma_for_recall(sigmas, line[::-1], 0.74)[0] == 0.03  # a falling line above the floor: the smallest
    assert tasks.sigma_for_recall(sigmas, line[::-1], 0.95)[0] == 0.1   # ... below it everywhere: the largest
    flat = [0.907, 0.877, 0.901, 0.883, 0.902]                          # every point above 0.87, slope about 0
    assert tasks.sigma_for_recall([0.04, 0.05, 0.06, 0.07, 0.08], flat, 0.87)[0] == 0.04
    assert tasks.sigma_for_recall([0.1, 0.1], [0.8, 0.9], 0.74) == (0.1, {})
    lucky = [0.62, 0.76, 0.78, 0.90]                                    # 0.05 above 0.74 by noise: the line says
    assert 0.05 < tasks.sigma_for_recall(sigmas, lucky, 0.74)[0] < 0.06


def test_sigma_tuning_fits_recall_over_four_draws():
    """The temperature by FID at sigma_init on seed + 1; then each sigma of the grid and sigma_init on seeds + 1
    ... + 4, their mean recall fitted by a line (sigma_for_recall); none tried when --gen-sigma is set."""
    from types import SimpleNamespace
    from tasks import ImageTask
    fid = {0.2: 2.0, 0.3: 2.1}                                           # temperature: FID at sigma_init
    task, seen = ImageTask.__new__(ImageTask), []
    task.one_step_images = lambda run, labels, t, seed, model=None, sigma=None: seen.append(seed) or (t, sigma, seed)

    def evaluator(key, labels):                                         # recall 0.5 + 4 sigma, +-0.03 by draw
        t, sigma, seed = key
        return dict(fid=fid[t] if sigma == 0.1 else 1 + 10 * sigma, recall=0.5 + 4 * sigma + (0.03 if seed % 2
                                                                                                else -0.03))

    def tune(teacher_recall, **kw):
        a = SimpleNamespace(seed=4, temperatures=[0.2, 0.3], sigma_init=0.1, sigmas=[0.03, 0.05, 0.07],
                            gen_sigma=None, recall_margin=0.02, gen_temperature=1.0)
        a.__dict__.update(kw)
        return task.tune_sampling(SimpleNamespace(args=a), evaluator, None, teacher_recall)
    t, sigma, record = tune(0.76)                                      # floor 0.74: the line meets it at 0.06
    assert (t, sigma, record["recall_floor"]) == (0.2, 0.06, 0.74) and sorted(set(seen)) == [5, 6, 7, 8]
    assert seen.count(5) == 2 + 3 and [seen.count(d) for d in (6, 7, 8)] == [4] * 3   # sigma_init's seed + 1 reused
    assert record["sigma_tuning"][0.05] == pytest.approx(dict(fid=1.5, recall=0.7))
    assert record["recall_fit"] == dict(slope=4.0, intercept=0.5)
    assert tune(0.6)[1] == 0.03 and tune(0.95)[1] == 0.1 and tune(0.76, recall_margin=0.06)[1] == 0.05
    assert tune(0.95, sigmas=[0.05, 0.12])[1] == 0.1075               # a grid above sigma_init: more noise than trained
    seen.clear()
    assert tune(0.9, gen_sigma=0.05)[:2] == (0.2, 0.05) and len(seen) == 2   # the temperatures only


def test_teacher_reference_cache_is_exact_and_keyed(image_run, tmp_path):
    """A rerun takes the teacher's samples from the cache and scores them to the same rows; another n is another key,
    sampled anew."""
    first = json.load(open(image_run / "metrics.json"))
    common = ["--teacher", "maskbit", "--steps", "1", "--batch-size", "4", "--tune-temperature", "", "--device", "cpu",
              "--cache", str(image_run / "cache")]
    distill.main(common + ["--eval-n", "60", "--out", str(tmp_path / "hit")])
    hit = json.load(open(tmp_path / "hit" / "metrics.json"))
    assert first["teacher_tokens"] == dict.fromkeys(["teacher", "teacher_1step", "teacher_seed+1", "teacher_seed+2"],
                                                    "sampled")              # + the sigma floor's two draws
    assert all(source.startswith(str(image_run / "cache")) for source in hit["teacher_tokens"].values())
    assert (hit["teacher"], hit["teacher_1step"]) == (first["teacher"], first["teacher_1step"])
    assert hit["fid_generator"] != first["fid_generator"]                # the generator itself is not cached
    distill.main(common + ["--eval-n", "50", "--out", str(tmp_path / "miss")])
    miss = json.load(open(tmp_path / "miss" / "metrics.json"))
    assert set(miss["teacher_tokens"].values()) == {"sampled"} and miss["teacher"]["n"] == 50
    assert len(list((image_run / "cache").glob("teacher_tokens-*.pt"))) == 8


def test_reference_tokens_equal_sampling_and_reject_a_wrong_file(tmp_path):
    from checkpoints import save_checkpoint
    from config import UserError
    from teacher import load_pair
    teacher = load_pair("maskbit", verbose=False)[0]
    labels, settings = torch.arange(6) % 10, dict(PRESETS["maskbit-toy"]["sampler"], steps=3)
    sampled, source = evaluation.reference_tokens(teacher, labels, settings, 5, str(tmp_path))
    assert source == "sampled" and torch.equal(sampled, evaluation.teacher_tokens(teacher, labels, settings, 5))
    cached, source = evaluation.reference_tokens(teacher, labels, settings, 5, str(tmp_path))
    assert source.startswith(str(tmp_path)) and torch.equal(cached, sampled)
    assert evaluation.reference_tokens(teacher, labels, settings, 6, str(tmp_path))[1] == "sampled"   # another seed
    assert evaluation.reference_tokens(teacher, labels, settings, 5, "")[1] == "sampled"              # no cache
    assert len(list(tmp_path.glob("*.pt"))) == 2
    save_checkpoint(dict(key="0" * 64, tokens=sampled), source)                  # a file under a name not its own
    with pytest.raises(UserError, match="another key"):
        evaluation.reference_tokens(teacher, labels, settings, 5, str(tmp_path))


def test_real_token_cache_follows_the_folder_and_rejects_a_wrong_file(tmp_path):
    """train.real_tokens keys its cache on the folder's files: a rerun reads the cache, an edited image (same name)
    is tokenized anew, and a file under a name not its own is refused."""
    import numpy as np
    from PIL import Image
    from checkpoints import save_checkpoint
    from config import UserError
    from teacher import load_pair
    from train import real_tokens
    teacher, tokenizer = load_pair("maskbit", verbose=False)[:2]
    rng = np.random.default_rng(0)
    for c in range(teacher.nclass):                                      # a.png goes to the test split, b.png to train
        os.makedirs(tmp_path / "data" / str(c))
        for name in ("a.png", "b.png"):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "data" / str(c) / name)
    data, cache = str(tmp_path / "data"), str(tmp_path / "cache")
    tokens, labels = real_tokens(tokenizer, teacher, data, cache, "cpu")
    assert tokens.shape == (10, teacher.seq_len, teacher.splits) and labels.tolist() == list(range(10))
    again, _ = real_tokens(tokenizer, teacher, data, cache, "cpu")
    assert torch.equal(again, tokens) and len(os.listdir(cache)) == 1
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "data" / "3" / "b.png")  # edited in place
    edited, _ = real_tokens(tokenizer, teacher, data, cache, "cpu")
    assert len(os.listdir(cache)) == 2 and not torch.equal(edited[3], tokens[3]) and torch.equal(edited[4], tokens[4])
    newest = max((os.path.join(cache, f) for f in os.listdir(cache)), key=os.path.getmtime)  # the edited folder's
    save_checkpoint(dict(key="0" * 64, tokens=tokens, labels=labels), newest)
    with pytest.raises(UserError, match="another key"):
        real_tokens(tokenizer, teacher, data, cache, "cpu")


def test_the_shipped_teacher_reference_is_the_default_runs_and_exact():
    """assets/teacher_tokens holds the default run's four teacher references (2000 samples: seed 0 at the sampler and
    at one step, seeds 1 and 2 at the sampler for the sigma tuning's floor): their keys are what the default
    evaluation asks for, and the report's (seed 0) first batch is sampled again here and compared bit for bit (the
    tuning draws' 16-step batches would add a minute; their keys pin the same sampler, labels and seed)."""
    from checkpoints import load_checkpoint
    from tasks import IMAGE_DEFAULTS
    from teacher import load_pair
    teacher = load_pair("maskbit", verbose=False)[0]
    n, sampler = IMAGE_DEFAULTS["eval_n"], PRESETS["maskbit-toy"]["sampler"]
    labels = torch.arange(n) % teacher.nclass
    for settings, seed in ((sampler, 0), (dict(sampler, steps=1), 0), (sampler, 1), (sampler, 2)):
        key, _ = evaluation.reference_key(teacher, labels, settings, seed)
        saved = load_checkpoint(os.path.join(evaluation.REFERENCE, f"teacher_tokens-{key[:16]}.pt"))
        assert saved["key"] == key and saved["tokens"].shape == (n, teacher.seq_len, teacher.splits)
        if seed == 0:
            first = evaluation.teacher_tokens(teacher, labels[:evaluation.EVAL_BATCH], settings, seed)
            assert torch.equal(saved["tokens"][:evaluation.EVAL_BATCH].long(), first)


def test_fingerprint_keys_on_every_byte():
    from checkpoints import fingerprint
    net = torch.nn.Linear(3, 2)
    before = fingerprint("a", net, torch.ones(2, dtype=torch.bfloat16))
    assert before == fingerprint("a", net, torch.ones(2, dtype=torch.bfloat16))
    assert before != fingerprint("b", net, torch.ones(2, dtype=torch.bfloat16))
    assert before != fingerprint("a", net, torch.ones(2, dtype=torch.float32))
    with torch.no_grad():
        net.bias[0] += 1e-7
    assert before != fingerprint("a", net, torch.ones(2, dtype=torch.bfloat16))


def test_generator_sample_from_run(image_run, tmp_path):
    generator.main(["sample", "--run", str(image_run), "--n", "4", "--out", str(tmp_path / "g.png")])
    record = json.load(open(tmp_path / "g.json"))
    assert record["step"] == 3 and record["n"] == 4 and (tmp_path / "g.png").exists()


def test_eval_commands(tmp_path, capsys):
    evaluation.main(["tokenizer", "--teacher", "maskbit", "--n", "40", "--out", str(tmp_path)])
    tok = json.load(open(tmp_path / "tokenizer.json"))
    assert tok["psnr"] > 15 and tok["recon"]["n"] == 40
    evaluation.main(["teacher", "--teacher", "maskbit", "--steps-list", "1,2", "--n", "30", "--out", str(tmp_path),
                     "--npz"])
    rows = json.load(open(tmp_path / "teacher_steps.json"))
    assert [r["steps"] for r in rows] == [1, 2] and all("fid" in r and "seed" in r for r in rows)
    assert np.load(tmp_path / "teacher_2steps.npz")["arr_0"].shape == (30, 32, 32, 3)
    capsys.readouterr()
    evaluation.main(["speed", "--teacher", "maskbit", "--batch-size", "4", "--repeats", "1", "--steps", "3"])
    speed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert speed["teacher_steps"] == 3 and speed["cfg_passes"] == 2 and speed["physical_limit"] == 6
    assert speed["speedup"] > 1 and 0 < speed["decode_images_per_s"] < 1e6       # timed, not a difference
    evaluation.main(["memory"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert {r["preset"] for r in rows} >= {"maskbit-12bit", "maskgit", "maskbit-toy"}
    assert 300e6 < next(r for r in rows if r["preset"] == "maskbit-12bit")["parameters"] < 310e6


def test_tokenizer_demo(capsys):
    tokenizer.main([])
    assert "round trip bits->ids ok: True" in capsys.readouterr().out


def test_temperature_grid_is_per_preset():
    """The toy teacher's optimum is below 1, the paper's (MaskGIT) near 7: each preset carries its own grid."""
    from config import RELEASED_TEMPS, runtime
    from tasks import build_task
    a = distill.build_parser().parse_args(["--teacher", "maskbit"])
    build_task(a, runtime("cpu"))
    assert a.tune_temperature == PRESETS["maskbit-toy"]["distill"]["tune_temperature"]
    assert max(map(float, a.tune_temperature.split(","))) < 1.0
    assert 7.0 in map(float, RELEASED_TEMPS.split(",")) and PRESETS["maskgit"]["distill"]["tune_temperature"]


def test_released_presets_get_the_papers_distillation_defaults():
    """Without flags a released teacher distils with Di[M]O's recipe, not the toy pair's; config.json records where
    every default came from, and a flag wins."""
    from tasks import distill_defaults
    for preset in ("maskbit-12bit", "maskgit"):
        a = distill.build_parser().parse_args(["--teacher", preset])
        distill_defaults(a, preset)
        assert (a.lr, a.lr_aux, a.batch_size, a.steps) == (1e-5, 1e-5, 64, 30000)
        assert (a.normalisation, a.label_smoothing, float(a.r_init), a.sigma_init, a.teacher_cfg) == \
            ("sum", 0.1, 0.6, 0.1, 2.0)
        assert a.defaults_used["lr"] == f"preset {preset}" and a.defaults_used["eval_n"] == "image default"
    a = distill.build_parser().parse_args(["--teacher", "maskbit-12bit", "--lr", "3e-5"])
    distill_defaults(a, "maskbit-12bit")
    assert a.lr == 3e-5 and "lr" not in a.defaults_used
    toy = distill.build_parser().parse_args(["--teacher", "maskbit"])
    distill_defaults(toy, "maskbit-toy")
    assert (toy.lr, toy.lr_aux, toy.steps, toy.batch_size, toy.lr_decay, toy.ema) == (3e-4, 2e-3, 1400, 32, 1.0, 0.9999)
    from tasks import ToyVocabTask
    vocab = distill.build_parser().parse_args(["--teacher", "toy-vocab", "--vocab", "3", "--length", "2"])
    ToyVocabTask(vocab, None)
    assert (vocab.steps, vocab.lr_decay, vocab.ema, vocab.r_init) == (3000, 0.5, 0.99, "0.3")
    assert PRESETS["maskbit-toy"]["distill"] is not PRESETS["maskgit"]["distill"]


def test_precision_gap_is_zero_for_the_same_arithmetic(tmp_path):
    """bench.precision_gap compares one generator pass of two runs on the same weights: two float32 runs give the
    same logits and gradients bit for bit, even after the base run has trained (its weights are copied over)."""
    import bench
    import distill
    runs = [distill.setup_run(distill.build_parser().parse_args(["--teacher", "maskbit", "--batch-size", "4",
                                                                 "--out", str(tmp_path / name)]))[0]
            for name in ("a", "b")]
    bench.full_step(runs[0])
    assert bench.precision_gap(*runs) == dict(logits_rel_diff=0.0, grad_rel_diff=0.0)
    assert all(p.grad is None for run in runs for p in run.gen.parameters()) and runs[1].gen.training


def test_bench_toy_world_times_each_stage_natively_and_with_avx2_kernels(capsys):
    """bench.py toy-world: each training loop of the bundled assets timed, profiled, and again in a child process
    with AVX2 kernels, side by side; the tokenizer and feature network are convolution-bound, the teacher not."""
    import bench
    capsys.readouterr()
    bench.main(["toy-world", "--steps", "1", "--profile"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line.startswith("{")]
    stages = {r["stage"]: r for r in rows if "op" not in r}
    assert list(stages) == ["tokenizer", "teacher", "features"]
    assert [stages[s]["batch_size"] for s in stages] == [32, 128, 128]
    for row in stages.values():
        assert row["step_s"] > 0 and row["step_s_avx2"] > 0
        assert row["avx2_slowdown"] == pytest.approx(row["step_s_avx2"] / row["step_s"], rel=0.02)
    ops = {s: [r["op"] for r in rows if r.get("op") and r["stage"] == s] for s in stages}
    assert all(len(v) == 8 for v in ops.values())
    assert "aten::convolution_backward" in ops["tokenizer"] and "aten::convolution_backward" in ops["features"]
    assert "aten::convolution_backward" not in ops["teacher"] and "aten::mm" in ops["teacher"]
    assert any("share_avx2" in r for r in rows if r.get("op"))


def test_config_json_records_the_defaults_used(image_run):
    config = json.load(open(image_run / "config.json"))
    assert config["defaults_used"]["lr"] == "preset maskbit-toy" and "steps" not in config["defaults_used"]


def test_bench_step_and_sweep(tmp_path, capsys):
    """bench.py step times every pass of a step and the step itself; bench.py sweep runs distill.py per joint of the
    family and summarises (both in a small form)."""
    import bench
    capsys.readouterr()
    bench.main(["step", "--repeats", "1", "--teacher", "maskbit", "--batch-size", "4", "--device", "cpu",
                "--profile"])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line.startswith("{")]
    row, ops = lines[0], lines[1:]
    assert len(ops) == 12 and {"aten::mm", "aten::addmm"} <= {op["op"] for op in ops}   # a transformer's step
    assert 0 < sum(op["share"] for op in ops) <= 1.001 and [op["share"] for op in ops] == sorted(
        (op["share"] for op in ops), reverse=True)
    assert set(row["seconds"]) == {"generator forward + backward", "teacher CFG pass", "auxiliary forward",
                                   "fresh generator sample", "auxiliary forward + backward", "Adam steps + EMA",
                                   "full step"}
    assert row["ratio"] > 0.5 and row["sum_of_passes"] == pytest.approx(sum(
        v for k, v in row["seconds"].items() if k != "full step"), abs=1e-3)
    capsys.readouterr()
    bench.main(["step", "--repeats", "2", "--teacher", "maskbit", "--batch-size", "4", "--device", "cpu",
                "--versus=--amp"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["versus"] == "--amp" and row["step_s"] > 0 and row["step_s_versus"] > 0
    assert row["speedup"] == pytest.approx(row["step_s"] / row["step_s_versus"], rel=1e-2)
    assert 1e-4 < row["logits_rel_diff"] < 0.05 and 1e-4 < row["grad_rel_diff"] < 0.05   # bf16 moved it, a little
    bench.main(["sweep", "--n", "2", "--first", "3", "--out", str(tmp_path), "--steps", "3", "--mdm-steps", "3",
                "--eval-n", "300"])
    sweep = json.load(open(tmp_path / "sweep.json"))
    assert [r["joint"] for r in sweep["rows"]] == [3, 4] and sweep["summary"]["joints"] == 2
    assert all(0 <= r["tv_floor"] <= 1 and 0 <= r["tv_generator"] <= 1 for r in sweep["rows"])
    assert (tmp_path / "joint_3" / "metrics.json").exists() and sweep["summary"]["flags"].startswith("--steps 3")
