"""Report of a sweep: python -m experiments.report --workdir=DIR

Reads DIR/results.csv (from experiments.evaluate, experiments.ablate_bits or
experiments.retrain) and writes DIR/report.md with PNG plots (see
qsim/evaluate/report.py and qsim/retrain/report.py).
"""

from absl import flags

from experiments import cli
from qsim.evaluate import report
from qsim.retrain import report as retrain_report

_WORKDIR = flags.DEFINE_string("workdir", None, "The sweep's workdir (holds results.csv).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  rows = report.read_rows(f"{_WORKDIR.value}/results.csv")
  write = retrain_report.write_report if "strategy" in rows[0] else report.write_report
  print(write(_WORKDIR.value))


if __name__ == "__main__":
  cli.run(main)
