"""The README runs as written: a newcomer's first contact (issue 13).

Every ```python block is executed as is, each in a fresh namespace. Every
`python -m train` command of a ```bash block is parsed by the real argument
parser (placeholders such as `runs/<run>` become a path), so a renamed or
removed flag fails here before it fails a reader.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from train import cli
from train import commands

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def _blocks(lang: str) -> list[str]:
  return [m.group(2) for m in _BLOCK.finditer(README.read_text())
          if m.group(1) == lang]


def _commands(block: str) -> list[list[str]]:
  """The `python -m train` command lines of a bash block, continuations joined,
  comments dropped, `<placeholders>` made into a word."""
  joined = re.sub(r"\\\n\s*", " ", block)
  out = []
  for line in joined.splitlines():
    line = re.sub(r"<[^>]*>", "X", line)
    words = shlex.split(line, comments=True)
    if words[:3] == ["python", "-m", "train"]:
      out.append(words[3:])
  return out


def test_readme_has_the_blocks_this_test_reads():
  assert _blocks("python"), "no python block found: is the README renamed?"
  assert sum(len(_commands(b)) for b in _blocks("bash")) >= 5


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_block_runs_as_written(index, capsys):
  code = _blocks("python")[index]
  exec(compile(code, f"README.md python block {index}", "exec"), {})  # pylint: disable=exec-used
  assert capsys.readouterr().err == ""


def test_readme_rda_train_commands_parse():
  parser = cli.parser()
  for block in _blocks("bash"):
    for argv in _commands(block):
      # Subcommands have their own parser, as cli.main dispatches them.
      p = commands.parser() if argv[:1] and argv[0] in commands.COMMANDS else parser
      try:
        p.parse_args(argv)
      except SystemExit as e:  # argparse's one-line error, exit 2
        pytest.fail(f"README: python -m train {' '.join(argv)}: exit {e.code}")


def test_help_texts_have_balanced_parentheses():
  for action in cli.parser()._actions:  # pylint: disable=protected-access
    text = action.help or ""
    depth = 0
    for ch in text:
      depth += {"(": 1, ")": -1}.get(ch, 0)
      assert depth >= 0, (action.option_strings, text)
    assert depth == 0, (action.option_strings, text)
