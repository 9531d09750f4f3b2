"""The README and docs/*.md hold together: every relative link resolves, the README stays a front page.

Pinned here, in well under a second and without importing torch:
* every relative link `[text](path)`, `[text](path#anchor)`, `[text](#anchor)` and image `![alt](path)` in README.md
  and docs/*.md names a file that exists (relative to the markdown file's folder) and, when it points into a
  markdown file, a heading that exists there, by GitHub's anchor rules;
* the checker itself reports a broken file and a broken anchor (so that the first check can fail);
* README.md is at most 300 lines and links every docs/*.md file.
"""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
MAX_README_LINES = 300

FENCE = re.compile(r"^ {0,3}(```|~~~)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`+[^`]*`+")
# `](target)` catches links and images alike; link texts may hold brackets of their own ("Di[M]O"), so the text
# before `](` is not parsed.  An optional title ("...") after the target is allowed.
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
EXTERNAL = ("http://", "https://", "mailto:")


def prose_lines(text):
    """The lines of a markdown text outside fenced code blocks, numbered from 1 (fenced lines are never headings)."""
    in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            yield number, line


def slug(heading):
    """GitHub's anchor for a heading's text: lowercase, keep letters, digits, spaces, '-' and '_', spaces -> '-'."""
    text = MD_LINK.sub(r"\1", heading)  # a link in a heading contributes its text only
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor of a markdown file; a repeated slug gets -1, -2, ... in order, as on GitHub."""
    seen, result = {}, set()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for _, line in prose_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(text):
    """(line number, target) of every link and image outside code, external ones left out."""
    for number, line in prose_lines(text):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if not target.startswith(EXTERNAL):
                yield number, target


def broken_links(path):
    """One message per link of a markdown file whose file or anchor does not exist."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    problems = []
    for number, target in links(text):
        file_part, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        where = f"{os.path.relpath(path, ROOT)}:{number}: {target}"
        if not os.path.exists(resolved):
            problems.append(f"{where}: no such file")
        elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
            problems.append(f"{where}: no heading with anchor #{anchor}")
    return problems


@pytest.mark.parametrize("path", [README] + DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_links_resolve(path):
    assert broken_links(path) == []


def test_checker_reports_broken_links(tmp_path):
    """A checker that never fails proves nothing: feed it one good and two broken links."""
    (tmp_path / "other.md").write_text("# A heading, with `code`\n\n## A heading, with code\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n"
                    "[fine](other.md#a-heading-with-code-1) [self](#page) ![img](missing.png)\n"
                    "[bad anchor](other.md#no-such-heading) `[in code](nowhere.md)` [web](https://example.com)\n"
                    "```\n# not a heading\n[in a fence](nowhere.md)\n```\n[fenced heading](#not-a-heading)\n")
    problems = broken_links(str(page))
    assert len(problems) == 3, problems
    assert "missing.png: no such file" in problems[0]
    assert "#no-such-heading" in problems[1]
    assert "#not-a-heading" in problems[2]


def test_slug_follows_github():
    # the old README linked this heading by the anchor GitHub gave it
    assert (slug("Soft-Di[M]O, part 2: rewards and test-time search (`rewards.py`, `tteo.py`)")
            == "soft-dimo-part-2-rewards-and-test-time-search-rewardspy-tteopy")
    assert slug("Faster on CPUs with bf16 units: `--amp`") == "faster-on-cpus-with-bf16-units---amp"


def test_readme_is_a_front_page():
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move details to docs/"


def test_every_doc_is_linked_from_readme():
    with open(README, encoding="utf-8") as f:
        targets = {os.path.normpath(target.partition("#")[0]) for _, target in links(f.read())}
    unlinked = [os.path.relpath(p, ROOT) for p in DOCS if os.path.relpath(p, ROOT) not in targets]
    assert unlinked == [], f"docs not linked from README.md: {unlinked}"
