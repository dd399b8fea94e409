"""The launchers' entry point: absl's ``app.run`` with user errors as one line.

qsim validates what a user gives it (config values, preset and set names,
paths) and raises ``ValueError`` or ``FileNotFoundError`` naming the bad value
and the valid choices. A launcher run through :func:`run` prints such an
error as one line, ``error: <message>``, and exits with status 2 (the shell's
usage-error code), without a Python traceback; any other exception is a fault
and keeps its traceback. ``QSIM_TRACEBACK=1`` shows the traceback of user
errors too (for debugging qsim itself).
"""

import os
import sys

from absl import app

USER_ERRORS = (ValueError, FileNotFoundError)


def run(main) -> None:
  def checked(argv):
    try:
      return main(argv)
    except USER_ERRORS as e:
      if os.environ.get("QSIM_TRACEBACK") == "1":
        raise
      print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
      sys.exit(2)

  app.run(checked)
