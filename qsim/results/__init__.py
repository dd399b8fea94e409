"""Results shared by every report: reading a results table, summary
statistics and their formatting, plots. (The row schema and the results
store are to move here too: issue 18.)"""

from qsim.results.plots import pyplot, save_figure
from qsim.results.tables import fmt_ci, mean, mean_ci, read_rows

__all__ = ["fmt_ci", "mean", "mean_ci", "pyplot", "read_rows", "save_figure"]
