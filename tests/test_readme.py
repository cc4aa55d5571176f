"""The README's code runs as written: its first block is the two commands; every Python block runs in a fresh
process in a folder where `runs/demo/export` holds an export of the (untrained) `demo` preset, the same
architecture the demo's fit exports there; every shell command is known, and each `vartok-*` command line, in
code blocks and in the commands table, names only flags its tool has (`vartok-train` lines are parsed by
the real CLI without running)."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FIRST_COMMANDS = 'pip install -e ".[dev]" && vartok-train fit --config configs/demo.yaml\npytest'


def code_blocks(language: str) -> list[str]:
    """The README's fenced blocks of one language, in order."""
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE) if lang == language]


def scripts() -> dict[str, str]:
    """The installed console scripts of vartok: name → "module:function"."""
    return {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")
            if e.name.startswith("vartok-")}


def shell_commands() -> list[list[str]]:
    """Each command of the README's bash blocks (lines split at &&), as argv lists."""
    commands = []
    for block in code_blocks("bash"):
        for line in block.splitlines():
            commands += [shlex.split(part) for part in line.split("&&") if part.strip()]
    return commands


def table_commands() -> list[list[str]]:
    """The `vartok-*` command lines of the README's commands table, placeholders and [optional] parts kept."""
    return [shlex.split(code.replace("[", " ").replace("]", " ")) for code in
            re.findall(r"^\| `(vartok-[^`]*)`", README, flags=re.MULTILINE)]


def help_text(argv: list[str], capsys) -> str:
    """What `<tool> <subcommand> --help` prints, through the tool's console-script entry point."""
    module, function = scripts()[argv[0]].split(":")
    entry = getattr(importlib.import_module(module), function)
    words = [argv[1]] if len(argv) > 1 and not argv[1].startswith("-") else []
    old = sys.argv
    sys.argv = [argv[0], *words, "--help"]
    try:
        with pytest.raises(SystemExit) as exit_:
            entry()
    finally:
        sys.argv = old
    assert exit_.value.code in (0, None)
    return capsys.readouterr().out


def test_readme_starts_with_the_two_commands() -> None:
    assert code_blocks("bash")[0].strip() == FIRST_COMMANDS
    assert README.index("```bash\n" + FIRST_COMMANDS) < README.index("```", README.index("# vartok") + 1) + 1


@pytest.fixture
def demo_export_folder(tmp_path: Path) -> Path:
    """A folder whose runs/demo/export is an export of the demo preset (untrained: the blocks show the API)."""
    from vartok import Tokenizer

    Tokenizer.from_preset("demo").save_pretrained(tmp_path / "runs" / "demo" / "export")
    return tmp_path


@pytest.mark.timeout(300)
def test_python_blocks_run_as_written(demo_export_folder: Path) -> None:
    blocks = code_blocks("python")
    assert blocks, "the README has no Python block"
    for block in blocks:
        run = subprocess.run([sys.executable, "-c", block], check=False, cwd=demo_export_folder, capture_output=True, text=True,
                             timeout=240, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        assert run.returncode == 0, f"this README block fails:\n{block}\n{run.stderr[-3000:]}"


@pytest.mark.timeout(120)
def test_shell_commands_are_known_and_vartok_train_lines_parse(tmp_path, monkeypatch) -> None:
    from vartok.cli.train import VartokCLI
    from vartok.data import ImageDataModule
    from vartok.training.module import TokenizerModule

    monkeypatch.chdir(tmp_path)  # the trainer's folders go here, not into the checkout
    monkeypatch.setattr(sys, "argv", ["vartok-train"])  # the CLI reads its arguments from `args` only
    seen = set()
    for argv in shell_commands():
        seen.add(argv[0])
        if argv[0] == "pip":
            assert argv[:3] == ["pip", "install", "-e"] and argv[3] == ".[dev]"
            assert "dev" in importlib.metadata.metadata("vartok").get_all("Provides-Extra")
        elif argv[0] == "pytest":
            assert argv == ["pytest"] and importlib.util.find_spec("pytest") is not None
        elif argv[0] == "vartok-train":
            assert scripts()["vartok-train"] == "vartok.cli.train:cli"
            assert argv[1] in VartokCLI.subcommands(), argv
            args = [str(ROOT / a) if (ROOT / a).is_file() else a for a in argv[2:]]  # paths of the checkout
            cli = VartokCLI(TokenizerModule, ImageDataModule, run=False, args=args)
            assert isinstance(cli.model, TokenizerModule)
        else:
            raise AssertionError(f"README shell command {argv} is not checked by this test; add a check")
    assert {"pip", "vartok-train", "pytest"} <= seen


@pytest.mark.timeout(120)
def test_every_vartok_command_line_names_real_flags(capsys) -> None:
    lines = table_commands() + [argv for argv in shell_commands() if argv[0].startswith("vartok-")]
    assert {argv[0] for argv in lines} == set(scripts()), "each vartok tool appears in the README"
    for argv in lines:
        text = help_text(argv, capsys)
        flags = [word for word in argv if word.startswith("--")]
        missing = [flag for flag in flags if not re.search(re.escape(flag) + r"\b", text)]
        assert not missing, f"{' '.join(argv)}: {missing} not in its --help"
