"""The repository stands alone: no file (tracked, or new and not ignored) points outside it, and the
documentation's relative links resolve."""
from __future__ import annotations

import pathlib
import re
import subprocess
import urllib.parse

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
# the project's working notes live outside the repository; a pointer to them (with or without the shared/
# prefix, as `notes/<name>.md` when the repository has no such file) leaves the reader stranded
OUTSIDE = re.compile(r"shared/notes|\.\./shared|(?<![\w/.-])notes/[\w.-]+\.md")
# [text](target) and ![alt](target); the target is <...> or ends at whitespace or ')' (a "title" may follow)
MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")


def _repository_files() -> list[pathlib.Path]:
    """Tracked files and new files git does not ignore (what the next commit may hold)."""
    cmd = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / name for name in out.decode().split("\0") if name]


def _markdown_files() -> list[pathlib.Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def relative_links(text: str) -> list[str]:
    """The link targets in markdown ``text`` that name a file of this repository (no URL, no pure anchor)."""
    targets = []
    for target in MD_LINK.findall(text):
        target = target[1:-1] if target.startswith("<") else target
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "/")):
            continue  # http:, mailto:, an anchor on the same page, a site-absolute path
        targets.append(urllib.parse.unquote(target.split("#", 1)[0]))
    return targets


def test_relative_links_parser():
    text = ('see [a](docs/a.md), ![img](images/x%3D1.png "t"), [b](b.md#part), [w](https://x.org/y.md), '
            '[c](#top), [d](<sp ace.md>)')
    assert relative_links(text) == ["docs/a.md", "images/x=1.png", "b.md", "sp ace.md"]


def outside_references(line: str) -> list[str]:
    """The pointers in ``line`` to files outside the repository (a bare ``notes/x.md`` only if the repository
    has no such file)."""
    return [m.group() for m in OUTSIDE.finditer(line)
            if not (m.group().startswith("notes/") and (REPO / m.group()).is_file())]


def test_outside_references_pattern():
    line = "see shared/notes/a.md, ../shared/b, (notes/jax-stack.md §1), ``notes/cpu-performance.md``, docs/notes/c.md"
    assert outside_references(line) == ["shared/notes", "../shared", "notes/jax-stack.md", "notes/cpu-performance.md"]
    assert outside_references("docs/performance.md, README.md, footnotes/x.md") == []


def test_no_file_points_outside_the_repository():
    offenders = []
    for path in _repository_files():
        if not path.is_file() or path == pathlib.Path(__file__).resolve():
            continue  # deleted in the working tree (not yet committed), or this file
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary (pictures)
        offenders += [f"{path.relative_to(REPO)}:{lineno}: {line.strip()}"
                      for lineno, line in enumerate(text.splitlines(), 1) if outside_references(line)]
    assert not offenders, "references to files outside the repository:\n" + "\n".join(offenders)


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_markdown_links_resolve(doc):
    missing = [t for t in relative_links(doc.read_text(encoding="utf-8"))
               if not (doc.parent / t).resolve().exists()]
    assert not missing, f"{doc.relative_to(REPO)} links to missing files: {missing}"
