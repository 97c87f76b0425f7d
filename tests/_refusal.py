"""The check every bad-input test of the trainer's commands shares: one line
naming the input, exit code 2, and nothing under ``tmp_path`` written."""

from train import cli


def assert_refused(argv, needle, tmp_path, capsys):
  """Runs ``python -m train ARGV`` in-process and checks the refusal."""
  before = sorted(p.name for p in tmp_path.rglob("*"))
  try:
    code = cli.main(argv)
  except SystemExit as e:  # argparse's own errors
    code = e.code
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert len(err.splitlines()) == 1 and needle in err, err
  assert sorted(p.name for p in tmp_path.rglob("*")) == before
