"""The one thing every command here shares: ``--help`` / ``-h`` prints its usage (the module's
docstring) and nothing else happens, for the commands whose arguments are Hydra overrides or
plain paths rather than an ``argparse`` parser."""

from __future__ import annotations

import sys


def wants_help(argv: list[str], doc: str | None) -> bool:
    """True (after printing ``doc``) when ``argv`` asks for help; the caller returns 0."""
    if not any(a in ("-h", "--help") for a in argv):
        return False
    print((doc or "").strip() or "no usage text", file=sys.stdout)
    return True
