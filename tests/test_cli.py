"""The command line: one module of `diffnphr.cli` per command group, the README's commands, flags reaching the
library, and the one-line errors (the reconstruct and transfer runs themselves are test_pipeline's)."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from diffnphr.__main__ import main
from diffnphr.cli import GROUPS, build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Each group's commands, in the order `python -m diffnphr --help` lists them.
GROUP_COMMANDS = {
    "convert": ["convert-mononphm", "convert-farl"],
    "data": ["convert-ict", "build-backgrounds"],
    "train": ["train-decoder", "slim-run", "export-decoder", "train-reconstruction", "export-reconstruction", "fit"],
    "bench": ["bench"],
    "eval": ["eval"],
    "reconstruct": ["reconstruct", "transfer"],
}
EVAL_COMMANDS = ["decoder", "reconstruction", "landmarks", "crops", "correspondence", "refinement"]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _readme_commands() -> list[list[str]]:
    """Every `python -m diffnphr ...` line of the README's bash blocks as arguments: continuation lines joined,
    comments dropped, optional `[...]` flags kept and the first of `a|b|c` alternatives taken."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].replace("[", " ").replace("]", " ")
            words = [word.split("|")[0] for word in shlex.split(line)]
            if words[:3] == ["python", "-m", "diffnphr"]:
                commands.append(words[3:])
    return commands


def test_each_group_module_adds_its_own_commands_and_handlers():
    """One room per group: a parser built from one group's module has exactly its commands, run by its handlers."""
    assert [group.__name__.rsplit(".", 1)[1] for group in GROUPS] == list(GROUP_COMMANDS)
    for group in GROUPS:
        parser = argparse.ArgumentParser()
        group.add_commands(parser.add_subparsers(dest="command", required=True))
        commands = _subcommands(parser)
        assert list(commands) == GROUP_COMMANDS[group.__name__.rsplit(".", 1)[1]]
        leaves = [*commands.values()] if "eval" not in commands else [*_subcommands(commands["eval"]).values()]
        assert all(leaf.get_default("run").__module__ == group.__name__ for leaf in leaves)
    whole = _subcommands(build_parser())
    assert list(whole) == [command for commands in GROUP_COMMANDS.values() for command in commands]
    assert list(_subcommands(whole["eval"])) == EVAL_COMMANDS


def test_the_readme_commands_parse_and_cover_every_command():
    parser = build_parser()
    seen = set()
    for words in _readme_commands():
        args = parser.parse_args(words)
        assert callable(args.run), words
        seen.add(" ".join(words[:2]) if words[0] == "eval" else words[0])
    every = {c for cs in GROUP_COMMANDS.values() for c in cs if c != "eval"} | {f"eval {c}" for c in EVAL_COMMANDS}
    assert seen == every


def test_the_help_of_every_command_names_its_flags(capsys):
    parser = build_parser()
    for name, command in _subcommands(parser).items():
        leaves = _subcommands(command).items() if name == "eval" else [("", command)]
        for sub, leaf in leaves:
            with pytest.raises(SystemExit) as stopped:
                main([name, *([sub] if sub else []), "--help"])
            text = capsys.readouterr().out
            assert stopped.value.code == 0
            assert text.startswith(f"usage: python -m diffnphr {name}")
            flags = [s for a in leaf._actions for s in a.option_strings if s.startswith("--")]
            assert all(flag in text for flag in flags), (name, sub)


def test_fit_hands_every_flag_to_the_library_and_prints_its_report(monkeypatch, capsys):
    calls = []

    def fake_fit_heads(*args, **kwargs):
        calls.append((args, kwargs))
        return {"fitted": 4, "out": Path("o")}

    monkeypatch.setattr("diffnphr.train.fit.fit_heads", fake_fit_heads)
    argv = ["fit", "--decoder", "d", "--split", "s", "--out", "o", "--expressions", "4", "--which", "train"]
    assert main([*argv, "--factor-map", "f", "--time-budget", "30", "--device", "cpu"]) == 0
    ((args, kwargs),) = calls
    assert args == (Path("d"), Path("s"), Path("o"))
    assert kwargs == {
        "which": "train",
        "count": None,
        "expressions": 4,
        "steps": None,
        "time_budget_s": 30.0,
        "factor_map_dir": Path("f"),
        "ict_path": None,
        "device": "cpu",
    }
    assert json.loads(capsys.readouterr().out) == {"fitted": 4, "out": "o"}


def test_eval_reconstruction_reads_its_shard_and_refuses_a_bad_one(monkeypatch, capsys):
    received = {}
    monkeypatch.setattr(
        "diffnphr.eval.reconstruction.run.evaluate_reconstruction",
        lambda *args, **kwargs: received.update(kwargs) or {"complete": True},
    )
    assert main(["eval", "reconstruction", "--shard", "1/4", "--max-minutes", "9", "--json"]) == 0
    assert received["shard"] == (1, 4) and received["max_minutes"] == 9.0 and received["resolution"] == 128
    assert json.loads(capsys.readouterr().out) == {"complete": True}
    for bad, says in (("4/4", "K/N needs 0 <= K < N"), ("a/b", "expected K/N such as 0/4")):
        with pytest.raises(SystemExit) as stopped:
            main(["eval", "reconstruction", "--shard", bad])
        assert stopped.value.code == 2 and says in capsys.readouterr().err


def test_a_user_error_is_one_line_on_stderr_and_exit_2(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise FileNotFoundError("no run folder at runs/missing")

    monkeypatch.setattr("diffnphr.train.checkpoints.slim_checkpoint", refuse)
    assert main(["slim-run", "runs/missing"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == "error: no run folder at runs/missing" and not captured.out


def test_bench_prints_a_table_unless_asked_for_json(monkeypatch, capsys):
    report = {"device": "cpu", "results": [{"name": "decoder", "seconds": 0.5, "peak_mb": 12}]}
    monkeypatch.setattr("diffnphr.bench.run_benchmarks", lambda **kwargs: report)
    assert main(["bench", "--only", "decoder"]) == 0
    assert capsys.readouterr().out == "device: cpu\n  decoder: seconds=0.5, peak_mb=12\n"
    assert main(["bench", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == report


def test_parsing_imports_none_of_the_libraries_the_commands_drive():
    """`--help` and a mistyped flag answer at once: the handlers import torch and the package when they run."""
    probe = (
        "import sys; from diffnphr.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'PIL', 'gradio') "
        "or (m.startswith('diffnphr.') and not m.startswith('diffnphr.cli'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]"
