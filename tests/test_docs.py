"""The documentation stands on its own: every relative link and section it cites resolves, nothing
cites a document outside the repository, the README's flag list is the parser's, and the code the
extension guide shows is the examples' (which tests/test_examples.py runs)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
OUTSIDE = re.compile(r"ALGORITHMS\.md|BASELINES\.md|DESIGN\.md|\u00a7")


def tracked(*patterns) -> list[Path]:
    names = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return [ROOT / name for name in names if (ROOT / name).is_file()]


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#+\s+(.*)$", path.read_text(), flags=re.M)
    return {slug(h) for h in headings}


def test_slug_matches_githubs_rule():
    assert slug("hetero-FLASH (`--hetero_client`)") == "hetero-flash---hetero_client"
    assert slug("2.8 FLASH's stage 1 (sensitivity)") == "28-flashs-stage-1-sensitivity"


@pytest.mark.parametrize("path", tracked("*.md"), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_section_resolves(path):
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        file, _, section = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(f"{target}: no {linked.relative_to(ROOT) if ROOT in linked.parents else linked}")
        elif section and linked.suffix == ".md" and section not in anchors(linked):
            broken.append(f"{target}: no section #{section} in {linked.name}")
    assert not broken, broken


def test_nothing_cites_a_document_outside_the_repository():
    citing = [f"{path.relative_to(ROOT)}:{number}" for path in tracked("*.py", "*.md", "*.toml", "*.sh")
              for number, line in enumerate(path.read_text().splitlines(), start=1) if OUTSIDE.search(line)]
    assert not citing, citing


def test_the_readmes_flag_list_is_the_parsers():
    """In a fresh interpreter: models and methods other tests register are not the package's."""
    generated = subprocess.run([sys.executable, "-c", "from flash_jax.cli import flags_markdown; "
                                "print(flags_markdown(), end='')"], cwd=ROOT, capture_output=True, text=True,
                               check=True, timeout=120).stdout
    readme = (ROOT / "README.md").read_text()
    listed = readme[readme.index("## Flags"):]
    assert generated in listed, ("README.md's flag list differs from the parser's; regenerate it with "
                                        "python -c 'from flash_jax.cli import flags_markdown; print(flags_markdown())'")


def test_the_extension_guides_code_is_copied_from_the_examples():
    examples = [path.read_text() for path in tracked("examples/*.py")]
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "extending.md").read_text(), flags=re.S)
    assert len(blocks) >= 3
    stale = [block.splitlines()[0] for block in blocks if not any(block in example for example in examples)]
    assert not stale, f"blocks of docs/extending.md that no example contains verbatim: {stale}"
