"""Report of a sweep: python -m experiments.report --workdir=DIR

Reads DIR/results.csv (from experiments.evaluate or experiments.ablate_bits)
and writes DIR/report.md with PNG plots (see qsim/evaluate/report.py).
"""

from absl import app
from absl import flags

from qsim.evaluate import report

_WORKDIR = flags.DEFINE_string("workdir", None, "The sweep's workdir (holds results.csv).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  print(report.write_report(_WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
