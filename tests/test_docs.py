"""The documentation the project cites ships with it.

- Every ``*.md`` file named in src/, scripts/, tests/ or README.md exists in the repository
  (``docs/<name>.md`` and bare names resolve against the repository root; URLs are ignored).
- Every citation of the form ``docs/<name>.md, section 'Heading'`` names a heading of that file.
- Every relative link in README.md and docs/*.md points to an existing file, and a
  ``#fragment`` into a markdown file to one of its headings (GitHub's anchors).

Plain file reads with regular expressions: no lohp import, well under a second.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "scripts", "tests")
SUFFIXES = {".py", ".md", ".txt", ".toml", ".cfg", ".ini", ".sh", ".yml", ".yaml"}
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".git"}

URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
MD_NAME = re.compile(r"(?<![\w./-])((?:\.{1,2}/)?(?:[\w.-]+/)*[\w-][\w.-]*\.md)(?![\w-])")
SECTION = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w-][\w.-]*\.md)\)?,?\s*\(?section\s+(['\"])([^'\"\n]+)\2")
LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _text_files(root: Path) -> list[Path]:
    files = [root / "README.md"] if (root / "README.md").exists() else []
    for top in SCANNED:
        for path in sorted((root / top).rglob("*")) if (root / top).is_dir() else []:
            parts = set(path.relative_to(root).parts)
            if parts & SKIPPED_DIRS or any(p.endswith(".egg-info") for p in parts):
                continue
            if path.is_file() and path.suffix in SUFFIXES:
                files.append(path)
    return files


@lru_cache(maxsize=None)
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _outside_fences(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    out, fenced = [], False
    for i, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((i, line))
    return out


def _norm(title: str) -> str:
    return " ".join(title.replace("`", "").split()).lower()


def headings(path: Path) -> list[str]:
    """The headings of a markdown file (outside code fences), as written."""
    return [line.lstrip("#").strip().rstrip("#").strip() for _, line in _outside_fences(_read(path))
            if re.match(r"#{1,6}\s", line)]


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings (lower case, punctuation dropped,
    spaces to hyphens, -1, -2, ... for repeats)."""
    seen: dict[str, int] = {}
    out = set()
    for title in headings(path):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def missing_citations(root: Path) -> list[str]:
    """``file:line cites <name>.md``, for every cited markdown file that does not exist."""
    bad = []
    for path in _text_files(root):
        for i, line in enumerate(_read(path).splitlines(), 1):
            if ".md" not in line:
                continue
            for name in MD_NAME.findall(URL.sub(" ", line)):
                if not (root / name).is_file():
                    bad.append(f"{path.relative_to(root)}:{i} cites {name}")
    return bad


def missing_sections(root: Path) -> list[str]:
    """``file:line cites <name>.md, section 'X'``, for every section that is not a heading of that file."""
    bad = []
    cache: dict[Path, set[str]] = {}
    for path in _text_files(root):
        for i, line in enumerate(_read(path).splitlines(), 1):
            if ".md" not in line:
                continue
            for name, _, title in SECTION.findall(URL.sub(" ", line)):
                target = root / name
                if not target.is_file():
                    continue  # missing_citations names it
                if target not in cache:
                    cache[target] = {_norm(h) for h in headings(target)}
                if _norm(title) not in cache[target]:
                    bad.append(f"{path.relative_to(root)}:{i} cites {name}, section {title!r}, which has no such heading")
    return bad


def broken_links(root: Path) -> list[str]:
    """``file:line -> target``, for every relative link of README.md and docs/*.md that
    points nowhere (or to a heading its markdown target does not have)."""
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    bad = []
    for page in (p for p in pages if p.is_file()):
        for i, line in _outside_fences(_read(page)):
            for target in LINK.findall(INLINE_CODE.sub("", line)):
                if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:, ...
                    continue
                file_part, _, fragment = target.partition("#")
                dest = (page.parent / file_part).resolve() if file_part else page
                if not dest.exists():
                    bad.append(f"{page.relative_to(root)}:{i} -> {target} (no such file)")
                elif fragment and dest.suffix == ".md" and fragment.lower() not in anchors(dest):
                    bad.append(f"{page.relative_to(root)}:{i} -> {target} (no such heading)")
    return bad


def test_every_cited_markdown_file_exists():
    bad = missing_citations(ROOT)
    assert not bad, "cited files missing from the repository (write them under docs/ or fix the name):\n" \
        + "\n".join(bad)


def test_every_cited_section_is_a_heading():
    bad = missing_sections(ROOT)
    assert not bad, "\n".join(bad)


def test_every_relative_link_in_the_docs_resolves():
    bad = broken_links(ROOT)
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_the_docs_the_readme_lists_exist():
    readme = _read(ROOT / "README.md")
    for name in ("method", "data", "architecture", "conditions", "matching", "generation"):
        assert f"(docs/{name}.md)" in readme, f"README.md does not link docs/{name}.md"
        assert (ROOT / "docs" / f"{name}.md").is_file()


def test_the_checkers_see_a_missing_file_a_missing_section_and_a_broken_link(tmp_path):
    """The checks above can fail: planted mistakes are found, URLs and globs are not."""
    md = ".md"
    (tmp_path / "docs").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "docs" / f"real{md}").write_text("# Real\n\n## The loss\n\n```\n# not a heading\n```\n")
    (tmp_path / "README.md").write_text(
        f"See [real](docs/real{md}#the-loss), [gone](docs/gone{md}), [bad anchor](docs/real{md}#nope),\n"
        f"[web](https://example.org/X{md}) and `[code](docs/real{md}#nope)`.\n")
    (tmp_path / "src" / "mod.py").write_text(
        f"# SPEC{md}, docs/real{md}, section 'The loss'; docs/real{md}, section 'Not there'\n"
        f"# https://example.org/docs/URL{md} and files like *{md} are not citations\n"
        f"path = f'{{name}}{md}'\n")
    assert missing_citations(tmp_path) == [f"README.md:1 cites docs/gone{md}", f"src/mod.py:1 cites SPEC{md}"]
    assert missing_sections(tmp_path) == [
        f"src/mod.py:1 cites docs/real{md}, section 'Not there', which has no such heading"]
    assert broken_links(tmp_path) == [f"README.md:1 -> docs/gone{md} (no such file)",
                                      f"README.md:1 -> docs/real{md}#nope (no such heading)"]
    assert anchors(tmp_path / "docs" / f"real{md}") == {"real", "the-loss"}
