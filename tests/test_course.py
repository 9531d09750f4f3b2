"""The course assignments are real (course/assignments.py, docs/course.md).

For every assignment, on copies made by the tool itself: its grading tests pass on this repository, every one of
them fails on a handout that blanks that function alone, and fails with that assignment's NotImplementedError (not
an import or collection error); each plausible wrong solution listed beside it, applied as a text substitution
inside the function, is rejected.  The reference run is ``course.run_tests`` (a subprocess, as ``grade`` runs); the
forty handout runs are pytest in processes forked from a server that has torch imported already (importing it was
most of each run's time), two at a time (CI has two cores), one thread each.  Also: blanking keeps decorators, signature and docstring; bad ids and folders are one-line errors;
docs/course.md lists the assignments as ``list --markdown`` prints them.
"""
import multiprocessing
import os
import re
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from config import UserError
from course import assignments as course

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")
WRONG = [(a, k) for a in course.ASSIGNMENTS for k in range(len(a.wrong))]


def substitute(source, name, old, new):
    """source with old replaced by new inside the body of function name, where it must occur exactly once."""
    first, end, _ = course.body_span(source, name)
    lines = source.splitlines(keepends=True)
    body = "".join(lines[first:end])
    assert body.count(old) == 1, f"{name}: '{old}' occurs {body.count(old)} times in its body"
    return "".join(lines[:first]) + body.replace(old, new) + "".join(lines[end:])


def pytest_in_fork(conn, folder, node_ids):
    """The body of a forked worker: pytest -q node_ids in folder, its output and exit code sent back on conn."""
    import torch
    torch.set_num_threads(1)
    os.environ.update(ENV)
    sys.dont_write_bytecode = True                          # as run_tests: a stale .pyc could hide a blanked body
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") not in (ROOT, os.path.join(ROOT, "tests"))]
    os.chdir(folder)
    with tempfile.TemporaryFile("w+") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        code = pytest.main(["-q", "--tb=short", "-p", "no:cacheprovider", *node_ids])
        sys.stdout.flush()
        sys.stderr.flush()
        out.seek(0)
        conn.send((out.read(), int(code)))


def forked_run(folder, node_ids, timeout=600):
    """course.run_tests's answer, (passed, total, output), from a worker forked off the torch-loaded server."""
    ctx = multiprocessing.get_context("forkserver")
    receive, send = ctx.Pipe(False)
    worker = ctx.Process(target=pytest_in_fork, args=(send, folder, list(node_ids)))
    worker.start()
    send.close()
    try:
        output, code = receive.recv() if receive.poll(timeout) else (f"no answer after {timeout} s", 2)
    except EOFError:
        output, code = "the worker died before answering", 2
    worker.join(10)
    if worker.is_alive():
        worker.kill()
        worker.join()
    return (*course.tally(output, code), output)


def blanked_run(folder, a):
    course.handout(folder, [a])
    return forked_run(folder, a.tests)


def wrong_run(folder, a, k):
    course.handout(folder, [])
    path = os.path.join(folder, a.file)
    source = open(path).read()
    with open(path, "w") as f:
        f.write(substitute(source, a.function, *a.wrong[k][:2]))
    return forked_run(folder, a.tests)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{job: (passed, total, output)} for the reference run, each blanked handout and each wrong solution."""
    tmp = tmp_path_factory.mktemp("course")
    every_test = sorted({t for a in course.ASSIGNMENTS for t in a.tests})
    jobs = {"reference": lambda: course.run_tests(ROOT, every_test, ENV)}
    jobs.update({("blank", a.id): (lambda a=a: blanked_run(str(tmp / f"blank-{a.id}"), a)) for a in course.ASSIGNMENTS})
    jobs.update({("wrong", a.id, k): (lambda a=a, k=k: wrong_run(str(tmp / f"wrong-{a.id}-{k}"), a, k))
                 for a, k in WRONG})
    multiprocessing.get_context("forkserver").set_forkserver_preload(["torch", "numpy", "pytest"])
    with ThreadPoolExecutor(2) as pool:
        futures = {key: pool.submit(job) for key, job in jobs.items()}
    return {key: future.result() for key, future in futures.items()}


def test_the_reference_passes_every_grading_test(results):
    passed, total, output = results["reference"]
    assert passed == total >= sum(len(a.tests) for a in course.ASSIGNMENTS), output[-3000:]


@pytest.mark.parametrize("a", course.ASSIGNMENTS, ids=lambda a: a.id)
def test_blanking_the_function_alone_fails_every_grading_test(results, a):
    passed, total, output = results[("blank", a.id)]
    assert total >= len(a.tests) and passed == 0, output[-3000:]
    assert f"NotImplementedError: assignment {a.id}:" in output, output[-3000:]
    assert "ERROR collecting" not in output and "ImportError" not in output, output[-3000:]


@pytest.mark.parametrize("a,k", WRONG, ids=[f"{a.id}-{k}" for a, k in WRONG])
def test_a_wrong_solution_is_rejected(results, a, k):
    passed, total, output = results[("wrong", a.id, k)]
    assert "ERROR collecting" not in output and total >= len(a.tests), output[-3000:]
    assert passed < total, f"{a.id}: the wrong solution '{a.wrong[k][1]}' ({a.wrong[k][2]}) passes its tests"
    assert re.search(r"^FAILED ", output, re.M), output[-3000:]


SOURCE = '''import functools


class Net:
    @functools.lru_cache()
    def forward(self, x,
                y=1):
        """Doc
        string."""
        # a comment
        return x + y  # why


def plain(x):
    return x


def after():
    return 2
'''


def test_blank_keeps_decorators_signature_and_docstring():
    out = course.blank(SOURCE, "Net.forward", "assignment t: implement forward")
    assert out == SOURCE.replace('        # a comment\n        return x + y  # why\n',
                                 '        raise NotImplementedError("assignment t: implement forward")\n')
    out = course.blank(out, "plain", "p")
    assert '\ndef plain(x):\n    raise NotImplementedError("p")\n\n\ndef after():\n    return 2\n' in out
    with pytest.raises(UserError, match="no function Net.missing"):
        course.blank(SOURCE, "Net.missing", "m")


def test_bad_ids_and_folders_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="unknown assignment nope; choose from lfq-bits, "):
        course.main(["handout", "--out", str(tmp_path / "h"), "--only", "cfg,nope"])
    with pytest.raises(UserError, match="is inside the repository"):
        course.main(["handout", "--out", os.path.join(ROOT, "runs", "h")])
    with pytest.raises(UserError, match="is not a folder"):
        course.main(["grade", str(tmp_path / "missing")])
    assert not os.path.exists(tmp_path / "h")


def test_docs_list_the_assignments_as_the_tool_prints_them(capsys):
    course.show(markdown=True)
    section = capsys.readouterr().out.strip()
    assert section in open(os.path.join(ROOT, "docs", "course.md")).read(), "run: course/assignments.py list --markdown"
