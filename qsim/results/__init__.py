"""Results shared by every producer and report: the row schema, the
crash-safe results store, a results table read back, summary statistics and
their formatting, plots."""

from qsim.results.plots import pyplot, save_figure
from qsim.results.schema import (
    QUANT_FIELDS,
    QuantInfo,
    Row,
    RunInfo,
    SetInfo,
    environment,
    set_label,
    with_quant_fields,
)
from qsim.results.store import ResultsStore
from qsim.results.tables import fmt_ci, mean, mean_ci, read_rows, wilson

__all__ = [
    "QUANT_FIELDS",
    "QuantInfo",
    "ResultsStore",
    "Row",
    "RunInfo",
    "SetInfo",
    "environment",
    "fmt_ci",
    "mean",
    "mean_ci",
    "pyplot",
    "read_rows",
    "save_figure",
    "set_label",
    "wilson",
    "with_quant_fields",
]
