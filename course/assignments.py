"""Graded course assignments: an instructor blanks out one function of the method, the tests of its concept grade it.

Each assignment is one function of a concept file (tokenizer.py, masking.py, generator.py, distill.py,
soft_refine.py, tteo.py, rewards.py, eval.py, text_encoder.py, meissonic.py): the paper equation it implements, a
task statement for the student, the pytest node ids that grade it, the other assignments those tests also call
(blank both and the second fails too), and plausible wrong solutions the tests must reject (``tests/test_course.py``
checks both kinds of failure).

  python course/assignments.py list [--markdown]           the assignments (--markdown: docs/course.md's section)
  python course/assignments.py handout --out DIR [--only cfg,aux-loss]
        a student's copy of the repository with those functions' bodies (all by default) replaced by
        raise NotImplementedError("assignment <id>: ..."); signature, decorators and docstring stay
  python course/assignments.py grade DIR [--only ...]      run each assignment's grading tests in DIR and score them;
                                                           exit code 0 iff every graded assignment passes
"""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)                                           # config: the project's one-line errors
from config import ArgumentParser, UserError, cli


@dataclass(frozen=True)
class Assignment:
    id: str
    file: str
    function: str                        # a top-level function, or Class.method
    equation: str
    task: str
    tests: tuple                         # pytest node ids, relative to the repository root
    uses: tuple = ()                     # other assignments whose functions these tests also call
    wrong: tuple = ()                    # (old, new, why): a one-line wrong solution the tests reject


T, D, S, E = "tests/test_teacher.py::", "tests/test_distill.py::", "tests/test_soft.py::", "tests/test_tteo.py::"
TT = "tests/test_text_to_image.py::"

ASSIGNMENTS = [
    Assignment(
        "lfq-bits", "tokenizer.py", "index_to_bits",
        "LFQ code of id k: c_j = 2 bit_j(k) - 1, least significant bit first (MaskBit, arXiv 2409.16211)",
        "Map integer token ids [...] to their lookup-free-quantisation code vectors [..., num_bits]: feature j is +1 "
        "where bit j of the id is set and -1 where it is not, least significant bit first. The tokenizer's codebook, "
        "its decoder input and the teacher's bit features are built from this map, so it must invert bits_to_index "
        "over the whole codebook.",
        (T + "test_bits_round_trip_whole_codebook", T + "test_split_combine",
         T + "test_expected_bits_one_hot_and_uniform")),
    Assignment(
        "mask-schedule", "masking.py", "mask_ratio",
        "gamma(r): arccos acos(r)/(pi/2), cosine cos(pi r/2), linear 1-r, square 1-r^2, root 1-sqrt(r)",
        "Return the fraction of entries masked at time r in [0, 1] under each of the five schedules (r = 0: all "
        "masked, r = 1: none). r may be a float or a tensor; the result is a float32 tensor.",
        (T + "test_mask_ratio",)),
    Assignment(
        "forward-process", "masking.py", "random_mask",
        "x_t: per sample r ~ U(0, 1), exactly max(1, round(M gamma(r))) of the M = N S entries become the mask id "
        "(Di[M]O's get_mask_code)",
        "Implement the absorbing forward process that makes training inputs and Di[M]O's pseudo-intermediate state "
        "x_t. Draw r for every sample first (one torch.rand(B) from the generator given), then choose which entries "
        "to mask uniformly at random. The count is exact per sample, not a Bernoulli draw per entry; return the "
        "masked tokens and the boolean mask.",
        (T + "test_random_mask_exact_counts",), uses=("mask-schedule",),
        wrong=((".round().clamp(min=1)", ".floor().clamp(min=1)", "floor instead of round"),
               (".round().clamp(min=1)", ".round()", "forgets the at-least-1: a sample with r near 1 masks nothing"))),
    Assignment(
        "cfg", "masking.py", "cfg",
        "z = z_u + w (z_c - z_u); w = 1 is no guidance (Di[M]O's form; MaskBit's scale s is w - 1)",
        "Combine conditional and unconditional logits by classifier-free guidance in the project's one convention. "
        "Mind the trap: MaskBit writes cond + s (cond - uncond), which is this form with w = s + 1. guided_logits "
        "and both samplers go through this function.",
        (T + "test_cfg_convention_and_maskbit_conversion", T + "test_guided_logits_batches_cond_and_null"),
        uses=("lfq-bits",),
        wrong=(("return z_uncond + w * (z_cond - z_uncond)", "return z_cond + w * (z_cond - z_uncond)",
                "MaskBit's form: w = 1 would still guide"),)),
    Assignment(
        "token-init", "generator.py", "token_init",
        "x_init: exactly round(M r_init) of the M = N S entries are the mask id, the rest uniform ids "
        "(Di[M]O Sec. 4.3)",
        "Build the one-step generator's random input, the source of its entropy. Each sample gets exactly "
        "round(M r_init) masked entries at uniformly random places; every other entry is a uniform id in "
        "[0, mask_id). Return [B, N, S] (model.seq_len, model.splits, model.mask_id).",
        (D + "test_token_init_exact_count",)),
    Assignment(
        "divergence-grad", "distill.py", "divergence_grad",
        "Di[M]O Eqs. 14-16, 8: g_FKL = p - q, g_RKL = p (log p - log q - KL(p || q)), "
        "g = (1 - beta) g_FKL + beta g_RKL",
        "Return the gradient of the token-level divergence D(q || p) with respect to the auxiliary model's logits "
        "(p = softmax(logits_aux), q = softmax(logits_teacher)), entry by entry, and the divergence itself. 'fkl' is "
        "beta = 0, 'rkl' beta = 1, 'jeffreys' the beta given (it may be negative). Work in float32 log-space so that "
        "sharp distributions stay finite.",
        (D + "test_divergence_gradient_matches_autograd",),
        wrong=(("g_fkl = p - q", "g_fkl = q - p", "sign flip: the generator would climb the divergence"),)),
    Assignment(
        "surrogate", "distill.py", "dimo_surrogate",
        "Di[M]O Eq. 7: L = 1/2 sum_k w_k (z_k - sg(z_k - g_k))^2, so dL/dz = w g on the masked entries (Eq. 5)",
        "Write the loss whose gradient with respect to the generator's logits z is exactly the divergence gradient "
        "g, weighted by entry_weights(mask, normalisation) and zero on unmasked entries. Its value is not the "
        "divergence: only its gradient matters. distill.py's docstring derives why the stop-gradient does it.",
        (D + "test_surrogate_gradient_is_the_divergence_gradient",), uses=("divergence-grad",),
        wrong=(("(z.float() - g).detach()", "(z.float() - g)", "no stop-gradient: the gradient is 0"),)),
    Assignment(
        "aux-loss", "distill.py", "aux_loss",
        "L_psi = CE(psi(x_t, c), x) with label smoothing, over the masked entries of x_t = random_mask(x) only",
        "Train the auxiliary model as a masked model of the generator's own samples x: mask them with random_mask "
        "(with the generator given), call aux_call(x_t, labels) once, and return the label-smoothed cross-entropy "
        "averaged over the masked entries only, in float32.",
        (D + "test_aux_loss_is_cross_entropy_on_the_masked_entries_only",), uses=("mask-schedule", "forward-process"),
        wrong=((", label_smoothing=label_smoothing)", ")", "label smoothing dropped"),)),
    Assignment(
        "relax", "soft_refine.py", "relax",
        "Soft-Di[M]O Sec. 2.2: p = softmax(z), so e~ = E^T p is differentiable; gumbel-st: one_hot(argmax(z + G)) "
        "forward, d softmax(z + G) backward",
        "Turn logits [B, N, S, V] into token probabilities that carry z's gradient. 'soft' is the plain softmax; "
        "'gumbel-st', the paper's baseline, is exactly a one-hot draw from softmax(z) in the forward pass and the "
        "Gumbel-softmax's gradient in the backward pass. Raise ValueError on another mode.",
        (S + "test_one_hot_logits_reproduce_the_hard_path[maskbit]",
         S + "test_gumbel_st_is_hard_forward_soft_backward"),
        uses=("lfq-bits",)),
    Assignment(
        "gan-masking", "soft_refine.py", "mask_entries",
        "Soft-Di[M]O Sec. 2.4: per sample r ~ U[0, r_max], round(r M) of the M = N S entries take the mask token's "
        "features",
        "The discriminator's masking augmentation, the same for real (hard) and fake (soft) features [B, N, F]. "
        "Draw r (one torch.rand(B) from the generator, times r_max) and mask exactly round(r M) uniformly chosen "
        "entries; an entry is one split of one position, F/S features wide, and takes model.features of the mask "
        "id. Return the features and the realised ratio count / M.",
        (S + "test_gan_masking_counts_and_mask_embedding", S + "test_gan_masking_count_is_round_r_m_of_the_drawn_r"),
        uses=("lfq-bits",),
        wrong=(("* r_max * m).round()", "* r_max * m).floor()", "floor instead of round"),)),
    Assignment(
        "gan-term", "soft_refine.py", "gan_term",
        "Soft-Di[M]O Sec. 2.4: L_GAN = w_GAN E[softplus(-D(mask_r(Emb_phi(relax(z / T))), r, c))], non-saturating",
        "The generator's GAN loss on its soft embeddings: take fake_features(run, z), read the frozen backbone's "
        "states (backbone_states) and the discriminator's logits with every backbone and head weight frozen "
        "(weights_frozen), and return w_gan times the mean of -log sigmoid D with {'loss_gan': the unweighted value}. "
        "Keep the detached states, labels and r in run.fake_cache: the discriminator's next step reuses them.",
        (S + "test_gan_term_is_the_generator_loss_on_soft_embeddings_and_only_z_learns",),
        uses=("lfq-bits", "relax", "gan-masking"),
        wrong=(("F.softplus(-logits).mean()", "F.softplus(logits).mean()",
                "the discriminator's fake-side loss: the generator learns to look fake"),)),
    Assignment(
        "d-loss", "soft_refine.py", "d_step",
        "L_D = E[softplus(-D(real))] + E[softplus(D(fake))], real and fake features masked alike (the standard "
        "logistic loss: Soft-Di[M]O Sec. 2.4 does not state D's loss)",
        "One discriminator step: draw a batch of real tokens (torch.randint over run.real_tokens from run.rng), mask "
        "their features as the fakes were (mask_entries), read the backbone's states without gradient, set the "
        "learning rate lr, and take one step of the logistic loss. Return loss_d, and the mean sigmoid of D on the "
        "real and fake batches as d_real and d_fake.",
        (S + "test_d_step_loss_is_its_formula",),
        uses=("lfq-bits", "gan-masking"),
        wrong=(("F.softplus(-d_real).mean() + F.softplus(d_fake).mean()",
                "F.softplus(d_real).mean() + F.softplus(-d_fake).mean()", "real and fake swapped"),)),
    Assignment(
        "reward-term", "soft_refine.py", "reward_term",
        "Soft-Di[M]O Sec. 2.5: L_reward = -w_reward E[sum_i lambda_i R_i(Dec(Emb_Dec(relax(z / T))), c)]",
        "The reward loss on the soft-decoded images of the generator's logits z (soft_images of relax(z / T)), "
        "scored by rewards.score; return minus w_reward times the batch mean of the total reward, with "
        "{'loss_reward': minus the unweighted mean}. The gradient reaches z through the decoder.",
        (S + "test_reward_term_is_minus_the_weighted_reward_of_the_soft_decoded_images",),
        uses=("lfq-bits", "relax"),
        wrong=(("return -a.w_reward * total.mean()", "return a.w_reward * total.mean()",
                "the sign: the generator would minimise the reward"),)),
    Assignment(
        "tteo-step", "tteo.py", "tteo_step",
        "Soft-Di[M]O Sec. 2.6: e <- e + lr d/de sum_b R(Dec(Emb_Dec(softmax(z_theta(e)_b / T))), c_b)",
        "One step of test-time embedding optimisation: gradient ascent on the reward of the soft-decoded images with "
        "respect to the generator's input embeddings e, no weight touched. Each image takes its own step (sum the "
        "rewards over the batch, do not average). Count the passes in counts; return the new e, the logits of the "
        "old e and the rewards, all detached.",
        (E + "test_a_tteo_step_moves_e_init_and_no_weight[maskbit]", E + "test_small_steps_ascend_the_reward[maskbit]",
         E + "test_a_tteo_step_is_each_images_own", E + "test_a_tteo_step_is_plain_gradient_ascent"),
        uses=("lfq-bits", "token-init"),
        wrong=(("total.sum(), e)", "total.mean(), e)", "the batch mean: each step shrinks with the batch size"),
               ("(e + lr * grad)", "(e + lr * grad.sign())", "a signed step (FGSM-like), not SGD's"))),
    Assignment(
        "reward", "rewards.py", "ClassifierReward.__call__",
        "R(x, c) = log p_reward(c | clamp(x, 0, 1)), the toy stand-in for Soft-Di[M]O's rewards (Sec. 2.5)",
        "Score images [B, 3, H, W] by the reward classifier's log-probability of the requested class (a tensor [B]). "
        "Soft-decoded images are unclamped: clamp them to [0, 1] first, and run the network on the images' device.",
        (E + "test_the_reward_classifier_is_not_the_evaluation_network",
         E + "test_the_classifier_reward_is_the_log_probability_of_the_clamped_image"),
        wrong=(("net(images.float().clamp(0, 1))", "net(images.float())", "no clamp: scores unclamped images"),)),
    Assignment(
        "fid", "eval.py", "frechet_distance",
        "FID = |mu_a - mu_b|^2 + tr S_a + tr S_b - 2 tr (S_a^1/2 S_b S_a^1/2)^1/2 (Heusel et al. 2017)",
        "The Frechet distance between Gaussians fitted to feature sets a [n, d] and b [m, d], in float64. Take the "
        "square roots by symmetric eigendecompositions (clamping tiny negative eigenvalues to 0) rather than a "
        "general matrix square root; return a Python float.",
        ("tests/test_eval_data.py::test_frechet_distance_known_values",
         "tests/test_eval_data.py::test_frechet_distance_uses_the_unbiased_covariance"),
        wrong=(("torch.cov(a.t()), torch.cov(b.t())", "torch.cov(a.t(), correction=0), torch.cov(b.t(), correction=0)",
                "population covariances (divided by n): biased on small sets"),)),
    Assignment(
        "bpe-merge", "text_encoder.py", "CLIPTokenizer.bpe",
        "byte-level BPE (Sennrich et al. 2016; CLIP's variant): a chunk's UTF-8 bytes as symbols, '</w>' on the "
        "last, then repeatedly the adjacent pair of lowest merge rank joined everywhere",
        "Split one pre-split chunk into BPE symbols: map its UTF-8 bytes to their stand-ins (BYTE_SYMBOLS), append "
        "'</w>' to the last, then repeat: among the adjacent pairs pick the one with the lowest rank in self.ranks "
        "and join every non-overlapping occurrence, left to right; stop when no pair has a rank. The two special "
        "strings pass through as one symbol. Cache results in self.cache.",
        (TT + "test_bpe_merges_the_lowest_rank_everywhere",
         "tests/test_golden.py::test_clip_tokenizer_cases[pad-endoftext]"),
        wrong=(("key=lambda p: self.ranks.get(p, math.inf))", "key=lambda p: -self.ranks.get(p, -math.inf))",
                "the highest rank merged first"),
               ('word[-1] += "</w>"', 'word[0] += "</w>"', "the end-of-word marker on the first symbol"))),
    Assignment(
        "rope", "meissonic.py", "rope_tables",
        "Flux/Meissonic RoPE: per position axis a of width d_a, angle = p_a theta^(-2k/d_a), k < d_a/2, each angle "
        "for a pair (x_2k, x_2k+1), the axes concatenated; text at (0, 0, 0), image at (0, row, col)",
        "Build the rotary tables for ids [S, 3]: for every axis a (width axes_dims[a]), the angles p theta^(-2k/d) "
        "in float64, each repeated twice in a row so that consecutive pairs share it, the axes concatenated to "
        "[S, Dh]; return (cos, sin) in float32.",
        (TT + "test_rope_rotates_image_positions_by_axis_and_leaves_text_alone",
         "tests/test_golden.py::test_golden[meissonic_transformer.pt]"),
        uses=("joint-attention",),
        wrong=((".repeat_interleave(2, dim=1)", ".repeat(1, 2)", "the two halves layout (GPT-NeoX), not pairs"),
               ("1.0 / theta **", "theta **", "growing, not decaying, frequencies"))),
    Assignment(
        "joint-attention", "meissonic.py", "Attention.forward",
        "MMDiT joint attention: Q = [RMS(W_q^txt t); RMS(W_q x)], likewise K (and V without the norm), RoPE on Q "
        "and K, softmax(Q K^T / sqrt(Dh)) V, split back into text (first L rows) and image",
        "Attend over text and image jointly: per-head q, k, v of the image stream (to_*, norm_q/norm_k) and, when "
        "t is given, of the text stream (add_*_proj, norm_added_*), concatenated text first; RoPE on q and k with "
        "the tables given; one softmax attention (scaled by 1/sqrt(head dim)); with t, return (to_out[0] of the "
        "image rows, to_add_out of the text rows), without t (single-stream blocks) the attention output itself.",
        (TT + "test_joint_attention_is_one_softmax_over_text_then_image",
         "tests/test_golden.py::test_golden[meissonic_transformer.pt]"),
        uses=("rope",),
        wrong=(("torch.cat([tq, q], 2), torch.cat([tk, k], 2), torch.cat([tv, v], 2)",
                "torch.cat([q, tq], 2), torch.cat([k, tk], 2), torch.cat([v, tv], 2)",
                "image first: the text rows read back are image rows"),
               ("q, k = apply_rope(q, *rope), apply_rope(k, *rope)", "q = apply_rope(q, *rope)",
                "RoPE on the queries only"))),
]
BY_ID = {a.id: a for a in ASSIGNMENTS}
# A handout leaves these out: the wrong solutions hold fragments of the right ones, and the course check needs them.
INSTRUCTOR_ONLY = ("course/", "tests/test_course.py")


def select(only):
    """'cfg,aux-loss' -> those assignments in the list's order; None -> all of them."""
    if only is None:
        return list(ASSIGNMENTS)
    ids = [i.strip() for i in only.split(",") if i.strip()]
    unknown = [i for i in ids if i not in BY_ID]
    if unknown or not ids:
        problem = f"unknown assignment {', '.join(unknown)}" if unknown else "no assignment given"
        raise UserError(f"--only '{only}': {problem}; choose from {', '.join(BY_ID)}")
    return [a for a in ASSIGNMENTS if a.id in ids]


# ----------------------------------------------------------------------------------------------------------------
# Blanking a function: its lines found with ast, the body after the docstring replaced.
# ----------------------------------------------------------------------------------------------------------------
def find_function(tree, name):
    """The def node of 'name' or 'Class.method' at the module's top level, or None."""
    body = tree.body
    *classes, last = name.split(".")
    for cls in classes:
        body = next((n.body for n in body if isinstance(n, ast.ClassDef) and n.name == cls), None)
        if body is None:
            return None
    return next((n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == last), None)


def body_span(source, name):
    """(first, end, indent) of the function's body after its docstring: lines[first:end] (0-based) hold it."""
    node = find_function(ast.parse(source), name)
    if node is None:
        raise UserError(f"no function {name} in the source")
    first = node.body[0]
    has_doc = isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str)
    indent = source.splitlines()[first.lineno - 1][:first.col_offset]
    if indent.strip():                                                   # def f(x): return x
        raise UserError(f"{name}: its body starts on the line of its signature, so it cannot be blanked")
    return (first.end_lineno if has_doc else first.lineno - 1), node.end_lineno, indent


def blank(source, name, message):
    """source with the body of function name replaced by raise NotImplementedError(message)."""
    first, end, indent = body_span(source, name)
    lines = source.splitlines(keepends=True)
    return "".join(lines[:first] + [f"{indent}raise NotImplementedError({json.dumps(message)})\n"] + lines[end:])


def message(a):
    """What a blanked function raises: the assignment's id first, so that a failing test names it."""
    return f"assignment {a.id}: implement {a.function} (docs/course.md)"


# ----------------------------------------------------------------------------------------------------------------
# The commands.
# ----------------------------------------------------------------------------------------------------------------
def repository_files(root=ROOT):
    """Relative paths of the repository's files: what git tracks plus new files it does not ignore; without git,
    a walk that skips .git, runs/ and caches."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                             capture_output=True, text=True, check=True).stdout
        files = [f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", "runs", "__pycache__", ".pytest_cache"}
        files = []
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in skip)
            files += [os.path.relpath(os.path.join(folder, n), root) for n in names if not n.endswith(".pyc")]
    return sorted(f for f in files if os.path.isfile(os.path.join(root, f)))  # a deleted tracked file is gone


def handout(out, chosen, root=ROOT):
    """Write a student's copy of the repository to out with the chosen assignments' functions blanked."""
    out = os.path.abspath(out)
    if os.path.commonpath([out, os.path.abspath(root)]) == os.path.abspath(root):
        raise UserError(f"--out {out} is inside the repository; put the handout elsewhere")
    if os.path.exists(out) and os.listdir(out):
        raise UserError(f"--out {out} exists and is not empty; choose a new folder")
    for rel in repository_files(root):
        if not rel.startswith(INSTRUCTOR_ONLY):
            os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
            shutil.copy2(os.path.join(root, rel), os.path.join(out, rel))
    for a in chosen:
        path = os.path.join(out, a.file)
        with open(path) as f:
            source = f.read()
        with open(path, "w") as f:
            f.write(blank(source, a.function, message(a)))


def tally(output, returncode):
    """pytest -q's output and exit code -> (passed, total).  An interrupted run (a collection error, a typo in a node
    id ...) counts as at least one test, never a pass."""
    summary = next((line for line in reversed(output.splitlines()) if re.search(r" in [\d.]+s\b", line)), "")
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|errors?)\b", summary)}
    passed = counts.get("passed", 0)
    total = passed + counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    return passed, max(total, 1) if returncode not in (0, 1) else total


def run_tests(folder, node_ids, env=None, timeout=600):
    """python -m pytest -q node_ids in folder -> (passed, total, output).  No bytecode is written: a blanked file
    and its original can share size and mtime, and a stale .pyc would hide the change.  The project's tests need no
    third-party pytest plugin, and not loading those saves about a second per run."""
    env = dict(env or os.environ, PYTHONDONTWRITEBYTECODE="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--tb=short", *node_ids], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 0, 0, f"timed out after {timeout} s"
    output = proc.stdout + proc.stderr
    return (*tally(output, proc.returncode), output)


def grade(folder, chosen):
    """Each assignment's grading tests in folder, one pytest run each; prints a score per assignment and the total.
    -> True iff all pass."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder} is not a folder (give the handout's folder)")
    passes = 0
    for a in chosen:
        passed, total, output = run_tests(folder, a.tests)
        ok = total > 0 and passed == total
        passes += ok
        print(f"{a.id:<16} {a.file + ':' + a.function:<40} {passed:>3}/{total:<3} {'PASS' if ok else 'FAIL'}")
        if not ok:                                                       # which tests failed, and the first reason
            lines = output.splitlines()
            failed = [line.split(" - ")[0] for line in lines if line.startswith(("FAILED ", "ERROR "))]
            reason = next((line[1:].strip() for line in lines if line.startswith("E ")), lines[-1] if lines else "")
            more = [f"... {len(failed) - 4} more"] if len(failed) > 4 else []
            print("\n".join(f"    {line}" for line in failed[:4] + more + [reason]))
    print(f"{passes} of {len(chosen)} assignments pass")
    return passes == len(chosen)


def show(markdown=False):
    """The table of assignments, or (markdown) docs/course.md's section: a heading and a paragraph each."""
    if not markdown:
        print(f"{'id':<16} {'file:function':<40} {'tests':<23} {'also calls':<31} equation")
        for a in ASSIGNMENTS:
            where = f"{len(a.tests)} in {', '.join(sorted({os.path.basename(t.split('::')[0]) for t in a.tests}))}"
            print(f"{a.id:<16} {a.file + ':' + a.function:<40} {where:<23} {', '.join(a.uses) or '-':<31} "
                  f"{a.equation}")
        return
    for a in ASSIGNMENTS:
        files = "`, `".join(sorted({t.split("::")[0] for t in a.tests}))
        names = ", ".join(f"`{t.split('::', 1)[1]}`" for t in a.tests)
        uses = " and ".join(f"`{u}`" for u in a.uses)
        also = f"; they also call the function{'s' * (len(a.uses) > 1)} of {uses}" if a.uses else ""
        print(f"### `{a.id}`: `{a.file}:{a.function}`\n\n`{a.equation}`.  {a.task}  "
              f"Graded by {names} (`{files}`){also}.\n")


def main(argv=None):
    p = ArgumentParser(prog="course/assignments.py", description="graded course assignments: handouts and grading")
    sub = p.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="print the assignments")
    listing.add_argument("--markdown", action="store_true", help="as docs/course.md lists them")
    hand = sub.add_parser("handout", help="write a student's copy with the functions blanked")
    hand.add_argument("--out", required=True, help="a new folder outside the repository")
    hand.add_argument("--only", help="comma-separated assignment ids (default: all)")
    gr = sub.add_parser("grade", help="run the grading tests in a handout folder")
    gr.add_argument("dir", help="the student's copy (or . for the reference solution)")
    gr.add_argument("--only", help="comma-separated assignment ids (default: all)")
    a = p.parse_args(argv)
    if a.command == "list":
        show(a.markdown)
    elif a.command == "handout":
        chosen = select(a.only)
        handout(a.out, chosen)
        print(f"wrote {a.out}: {len(chosen)} function(s) blanked ({', '.join(x.id for x in chosen)})")
    else:
        sys.exit(0 if grade(a.dir, select(a.only)) else 1)


if __name__ == "__main__":
    cli(main)
