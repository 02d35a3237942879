"""Build peps.jsonl: real long technical documents for `pretrain` (domain adaptation) tests and benchmarks.

Source: the Python Enhancement Proposals, https://github.com/python/peps (`peps/pep-NNNN.rst`). Each PEP says
in its own "Copyright" section that it "has been placed in the public domain" or is under CC0-1.0; only
those are taken. One row per PEP: its text from the title on (the RFC 822 header block of metadata, the
Copyright section and the trailing editor comments dropped), cut at a paragraph boundary after
MAX_CHARS characters (about 1,000 SmolLM2 tokens), so each row is a ~1k-token document of real prose and
code. Rows are sorted by PEP number; the first N_DOCS qualifying PEPs with at least MIN_CHARS characters.

    python tests/data/real/peps/build.py /path/to/python/peps/checkout COMMIT
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_CHARS = 4500
MIN_CHARS = 3000
N_DOCS = 300
FREE = re.compile(r"placed in the public domain|CC0-1\.0", re.I)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def body(text: str) -> str | None:
    """The PEP's prose: None when it is not public domain / CC0."""
    parts = re.split(r"\n(Copyright\n=+\n)", text)
    if len(parts) < 3 or not FREE.search(parts[2][:400]):
        return None
    head, _, rest = parts[0].partition("\n\n")  # the header block ends at the first blank line
    fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", head, re.M))
    title = fields.get("Title", "").strip()
    prose = rest.strip()
    return f"PEP {fields.get('PEP', '?').strip()}: {title}\n\n{prose}" if title else None


def cut(text: str) -> str:
    """At most MAX_CHARS characters, ending at a paragraph boundary."""
    if len(text) <= MAX_CHARS:
        return text
    end = text.rfind("\n\n", 0, MAX_CHARS)
    return text[: end if end > MAX_CHARS // 2 else MAX_CHARS].rstrip()


def main(repo: Path, commit: str) -> None:
    names = sorted(
        n
        for n in git(repo, "ls-tree", "-r", "--name-only", commit).split()
        if re.fullmatch(r"peps/pep-\d{4}\.rst", n)
    )
    rows = []
    for name in names:
        b = body(git(repo, "show", f"{commit}:{name}"))
        if b is None or len(b) < MIN_CHARS:
            continue
        rows.append({"text": cut(b), "source": f"{name}@{commit[:12]}"})
        if len(rows) == N_DOCS:
            break
    with (HERE / "peps.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(rows)} documents from {len(names)} PEPs -> {HERE / 'peps.jsonl'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
