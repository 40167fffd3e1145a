"""The demo's second corpus (README, "Robustness"): the English fortune-cookie databases of
Debian's ``fortunes`` and ``fortunes-min`` packages (quotations, literature, jokes, laws and
definitions; modern prose, unlike the embedded corpus's technical docstrings), one fortune per
JSONL document. ``apt-get install fortunes fortunes-min`` then
``python -m scripts.experiments.fortunes_corpus corpus/fortunes.jsonl``; ASCII-art files are left out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from scripts.cli import wants_help

SOURCE = Path("/usr/share/games/fortunes")
SKIP = {"art", "ascii-art"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if wants_help(list(argv), __doc__):
        return 0
    out = Path(argv[0] if argv else "corpus/fortunes.jsonl")
    files = sorted(
        p for p in SOURCE.glob("*") if p.is_file() and not p.suffix and p.name not in SKIP
    )
    if not files:
        print(f"error: no fortune files in {SOURCE}: apt-get install fortunes fortunes-min")
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    n = chars = 0
    with out.open("w") as f:
        for p in files:
            for text in p.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
                text = text.strip().strip("%").strip()
                if len(text) >= 40:
                    f.write(json.dumps({"text": text}) + "\n")
                    n += 1
                    chars += len(text)
    print(f"{out}: {n} fortunes from {len(files)} files, {chars / 1e6:.2f}M characters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
