"""Parameter sweeps as batched container tasks on a dask.distributed cluster.

A sweep is one strategy, a grid (or a seeded random sample) of parameter sets, a
list of symbols and a date range over a bar store. The work is cut into
*container tasks*: a group of symbols x a contiguous range of parameter sets,
sized from a quick probe of the kernel so each task does ``batch_seconds`` of work
(0.2-2 s; smaller only when the whole sweep is too small to keep every thread
busy), and never more than ``MAX_TASKS`` tasks whatever the grid. A task gets its
symbols' :class:`~admf_dask.cache.IndicatorSet` futures from the indicator hub
(bars are loaded on the workers; the client never ships bar arrays), runs the
fused kernel through :func:`~admf_dask.backtest.run_batch`, writes its rows to
``results/part-<j>.parquet`` and then its marker ``done/part-<j>.json``: written
first, then marked. The marker records each file's size and sha256 and the layout
(``integrity``): resume trusts only parts that pass those checks.

One module per job:

=============  ==============================================================
``grid``       :class:`SweepConfig`, grid expansion, :class:`ParamSets`
``layout``     the kernel probe and the task layout
``container``  the container task (:func:`run_container`) and its timelines
``portfolio``  partial portfolio accumulators and their reduce
``results``    result tables and :class:`SweepResult`
``integrity``  what a done marker records; its checks on resume and assembly
``run``        :func:`run_sweep` and :func:`run_grid`: the run loop
=============  ==============================================================
"""

from .container import ContainerTask, Timeline, group_timeline, run_container
from .grid import ParamSets, SweepConfig, check_metric, check_run_settings, expand_params
from .layout import MAX_TASKS
from .portfolio import reduce_portfolio
from .results import PORTFOLIO, SweepResult
from .run import SweepFeed, run_grid, run_sweep

__all__ = ["MAX_TASKS", "PORTFOLIO", "ContainerTask", "ParamSets", "SweepConfig", "SweepFeed", "SweepResult",
           "Timeline", "check_metric", "check_run_settings", "expand_params", "group_timeline",
           "reduce_portfolio", "run_container", "run_grid", "run_sweep"]
