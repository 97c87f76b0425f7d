"""The exceptions the command line turns into one line and an exit code."""


class UsageError(ValueError):
  """Bad user input: a flag, a path, a data set. The message is one line that
  names the offending input; the CLI prints it and exits with code 2."""


class Stopped(Exception):
  """A run that ended early with its last good checkpoint on disk."""

  def __init__(self, msg: str, code: int):
    super().__init__(msg)
    self.code = code
