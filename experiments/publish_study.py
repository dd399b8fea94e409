"""Publish a finished study: python -m experiments.publish_study --workdir=runs/study --out=docs/results/fashion_mnist

Copies what a reader needs to check the study's findings into ``--out`` (a folder meant for the repository):
report.md and its plots, the evaluation sweep's tidy table and the retraining tables (gzipped CSV),
study_config.json, and RUN.md: the command that produced it, the commit it ran at (``commit.txt``, written
by ``experiments.study`` when the study began), the machine, the wall time per stage (timings.json, summed over
the processes that ran it), the trained networks' accuracies and the summary table of the report. Refuses a
workdir whose study has not finished (``qsim.study.publish.publish``).
"""

from absl import flags

from experiments import cli
from qsim.study.publish import publish

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished study workdir (python -m experiments.study).")
_OUT = flags.DEFINE_string("out", None, "The folder to publish into (created; its files are replaced).")
_COMMAND = flags.DEFINE_string("command", "", "The command that ran the study (default: read from the workdir).")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  del argv
  print(f"published: {publish(_WORKDIR.value, _OUT.value, _COMMAND.value)}")


if __name__ == "__main__":
  cli.run(main)
