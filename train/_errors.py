"""The one exception type the command line turns into 'error: ...' and exit 2."""


class UsageError(ValueError):
  """Bad user input: a flag, a path, a data set. The message is one line that
  names the offending input; the CLI prints it and exits with code 2."""
