"""Reports for training runs, one module per job: reading run directories
(:mod:`train.report.metrics`), figures (:mod:`train.report.plots`), tables
(:mod:`train.report.tables`); the live display is :mod:`train.progress`.
"""

from train.progress import Progress
from train.report.metrics import read_metrics
from train.report.metrics import short_layer_name
from train.report.plots import LAYERS_FILE
from train.report.plots import compare_figure
from train.report.plots import layer_bars
from train.report.plots import plot_compare
from train.report.plots import plot_frontier
from train.report.plots import plot_run
from train.report.plots import write_layers
from train.report.tables import format_table
from train.report.tables import markdown_table

__all__ = (
    "LAYERS_FILE",
    "Progress",
    "compare_figure",
    "format_table",
    "layer_bars",
    "markdown_table",
    "plot_compare",
    "plot_frontier",
    "plot_run",
    "read_metrics",
    "short_layer_name",
    "write_layers",
)
