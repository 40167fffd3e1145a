"""The README's commands, as written (issue 30): every command of its ``bash`` blocks and every
inline ``python -m ...`` / ``make ...`` is checked against the code, so the README cannot drift
from it again. Cheap ones run (``--plan`` for the drivers, config composition for training
overrides, the key check of the tuner); the rest are checked to exist (modules, the flags in
their ``--help``, Makefile targets, config keys and groups)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys

import pytest

from tests.helpers import REPO, _env

README = (REPO / "README.md").read_text()
PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.|\$\w+|\[--[^\]]*\]")


def _commands() -> list[str]:
    """Commands of the ``bash`` blocks (continuations joined, comments dropped) and inline
    code spans that start with ``python -m`` or ``make``."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line and not line.startswith("#"):
                out += [c.strip() for c in line.split("&&")]
    out += re.findall(r"`((?:python -m|make) [^`]+)`", README.replace("\n", " "))
    seen, uniq = set(), []
    for c in out:
        c = " ".join(c.split())
        if c not in seen:
            seen.add(c)
            uniq.append(c)
    return uniq


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", text, re.M))


_HELP: dict[str, str] = {}


def _help(module: str) -> str:
    if module not in _HELP:
        r = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, f"{module} --help: exit {r.returncode}: {r.stderr[-500:]}"
        _HELP[module] = r.stdout
    return _HELP[module]


def _overrides(args: list[str]) -> list[str]:
    """Training overrides of a command line, one value of each sweep list."""
    out = []
    for a in args:
        if "=" not in a or a.startswith("-"):
            continue
        key, _, value = a.partition("=")
        if "," in value and not value.startswith(("[", "'[")):
            value = value.split(",")[0]
        out.append(f"{key}={value.strip(chr(39))}")
    return out


def _check_train(args: list[str]) -> None:
    from scripts.config import compose, unknown_keys

    over = _overrides(args)
    cfg = compose([*over, "run_dir=."])
    assert not unknown_keys(cfg), unknown_keys(cfg)


def _check(cmd: str) -> None:
    words = shlex.split(PLACEHOLDER.sub("", cmd))
    if not words:
        return
    if words[0] == "make":
        targets = [w for w in words[1:] if "=" not in w]
        assert set(targets) <= _make_targets(), f"{cmd}: no Makefile target {targets}"
        return
    if words[0] in ("apt-get", "pip", "bash"):
        return
    if "-m" not in words:
        return
    module = words[words.index("-m") + 1]
    args = words[words.index("-m") + 2 :]
    if module.endswith("."):  # scripts.<name>: a pattern, not a command
        return
    assert importlib.util.find_spec(module) is not None, f"{cmd}: no module {module}"
    if "<" in cmd:  # <preset>, <overrides>: the module is checked, the words are not real
        return
    if module == "scripts.train":
        _check_train([a for a in args if a != "-m"])
    elif module == "scripts.reproduce":
        from scripts.experiments import reproduce

        argv = [a for a in args if a not in ("--slurm",)] + ["--plan"]
        assert reproduce.main(argv) == 0, cmd
    elif module == "scripts.tune":
        from scripts.experiments.tune import parse, space_path

        tc, rest = parse(args)
        assert space_path(tc.space).exists(), f"{cmd}: no tuning space {tc.space}"
        _check_train(rest)
    elif module in ("scripts.prepare",):
        _check_train(args)
    else:
        text = _help(module)
        for flag in [a for a in args if a.startswith("--")]:
            assert flag.split("=")[0] in text, f"{cmd}: {module} has no {flag}"


COMMANDS = _commands()


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 25, COMMANDS
    assert "make demo" in COMMANDS and "make test" in COMMANDS


@pytest.mark.parametrize("cmd", COMMANDS)
def test_readme_command(cmd, capsys):
    _check(cmd)


def test_a_drifted_command_is_caught():
    """The checker has teeth: a wrong flag, module, target or key each fail."""
    for bad in (
        "python -m scripts.report runs --no-such-flag",
        "python -m scripts.no_such_module",
        "make no-such-target",
        "python -m scripts.train tokenizer.kind=bpe",
    ):
        with pytest.raises(Exception):  # noqa: B017 - any failure is the point
            _check(bad)
