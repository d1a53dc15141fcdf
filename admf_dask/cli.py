"""The ``admf`` command: a thin click group; heavy imports happen inside the commands.

Messages go through :mod:`logging` (set up by :func:`admf_dask.logs.setup_logging`
in the group's callback from the global options ``--log-file``, ``-q``, ``-v``);
a command's result (a table, a run summary) goes to stdout, or, with ``--json``,
stdout holds exactly one JSON object at the end and nothing else.

Exit codes (also in ``admf --help`` and the README):

===  ==================================================================="""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from contextlib import ExitStack
from typing import Any

import click

from . import __version__
from .errors import AdmfError, ConfigError, Interrupted
from .logs import FILE_ONLY, collect_warnings, hush_libraries, setup_logging
from .report import (BAD_INPUT, INTERRUPTED, dumps, error_line, format_signal_set, format_top, ingest_data,
                     outcome, run_data, signal_set_data, top_records, utc_now)

log = logging.getLogger("admf_dask.cli")  # not __name__: `python -m admf_dask.cli` runs it as __main__

STORE_HELP = "Dataset URL or path: a local directory, file://, s3://bucket/prefix, memory://..."

EXIT_CODES = """\b
Exit codes:
  0    ok
  1    failure (unexpected error: its traceback on stderr, or in --log-file; a hint to report it)
  2    bad input or configuration
  75   busy: another process is running this run or workflow; try later
  130  interrupted (SIGINT, SIGTERM): committed work is kept, rerun to resume

\b
Environment: ADMF_LOG_FILE, ADMF_PROGRESS, and for every command that takes them
ADMF_CLUSTER, ADMF_STORAGE, ADMF_MEMORY_BUDGET, ADMF_STORAGE_OPTIONS ("k=v k=v").
"""


class Session:
    """One invocation of ``admf``: its output settings, and what ``--json`` prints at the end."""

    def __init__(self, *, own_stdout: bool = False) -> None:
        self.own_stdout = own_stdout  # the console entry point: may take fd 1 over for --json
        self.json = False
        self.verbosity = 0
        self.log_file: str | None = None
        self.command: str | None = None
        self.started, self.t0 = utc_now(), time.perf_counter()
        self.data: dict[str, Any] = {}
        self.steps: list[Any] | None = None  # a workflow's StepRecords
        self.warnings: list[str] = []  # every warning admf logged during the command
        self._json_out = sys.stdout

    def take_stdout(self) -> None:
        """With --json, stdout holds only the summary: whatever else writes to fd 1 (a library, a
        worker process, a user's strategy printing) lands on stderr from here on."""
        if not self.own_stdout:
            return
        sys.stdout.flush()
        self._json_out = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)

    def output(self, text: str) -> None:
        """A command's result: stdout (and the log file), or the log when stdout is kept for --json."""
        if self.json:
            log.info("%s", text)
        else:
            click.echo(text)
            log.info("%s", text, extra=FILE_ONLY)

    def fail(self, exc: BaseException) -> tuple[int, str, str]:
        """Report an error on one line of stderr (the traceback of an unexpected one to the log file).

        Returns the exit code, the status word and the error text for ``--json``.
        """
        code, status = outcome(exc)
        if code == INTERRUPTED:
            by = f" by {exc.name}" if isinstance(exc, Interrupted) else ""
            line = f"interrupted{by}: committed work is kept; rerun the same command to resume"
            log.warning("%s", line, extra=FILE_ONLY)
        elif isinstance(exc, AdmfError):
            line = f"error: {exc}"
            log.error("%s", line, extra=FILE_ONLY)
        else:  # not a known user error: the traceback (on stderr, or in the log file), and whom to tell
            line = f"error: {error_line(exc)}"
            log.error("%s", line, exc_info=exc, extra=FILE_ONLY)
            if self.verbosity > 0 or not self.log_file:
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
                line += "; the traceback is above"
            else:
                line += f"; the traceback is in {self.log_file}"
            line += (f"\nhint: an unexpected error (exit 1): unless the traceback ends in your own code (a strategy),"
                     f" please report it as a bug of admf-dask {__version__}, with the command and the traceback")
        click.echo(line, err=True)
        return code, status, line if code == INTERRUPTED else error_line(exc)

    def summary(self, code: int, status: str, error: str | None) -> dict[str, Any]:
        """The ``--json`` object: outcome, times, version and host, the command's data, steps, warnings."""
        out = {"command": self.command, "status": status, "exit_code": code, "error": error,
               "started": self.started, "finished": utc_now(), "seconds": round(time.perf_counter() - self.t0, 3),
               "version": __version__, "host": socket.gethostname(), "pid": os.getpid(),
               "log_file": os.path.abspath(self.log_file) if self.log_file else None,
               **self.data}
        if self.steps is not None:
            out["steps"] = [r.as_dict() for r in self.steps]
        out["warnings"] = list(self.warnings)
        return out

    def print_json(self, code: int, status: str, error: str | None) -> None:
        self._json_out.write(dumps(self.summary(code, status, error)) + "\n")
        self._json_out.flush()


def _options(pairs: tuple[str, ...]) -> dict:
    """Parse ``-o key=value`` storage options; numbers and true/false are typed."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="-o/--storage-option")
        out[key] = yaml.safe_load(value) if value else ""
    return out


def _symbol_list(text: str | None, option: str) -> list[str] | None:
    """Comma-separated symbols; None when the option is not given, an error when it names none."""
    if text is None:
        return None
    symbols = [s.strip() for s in text.split(",") if s.strip()]
    if not symbols:
        raise click.BadParameter(f"{text!r} names no symbol", param_hint=option)
    return symbols


def _numbers(text: str, option: str) -> list[float]:
    """Comma-separated finite numbers."""
    import math

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: comma-separated numbers", param_hint=option) from None
    if not values or not all(math.isfinite(v) for v in values):
        raise click.BadParameter(f"{text!r}: comma-separated finite numbers", param_hint=option)
    return values


def _env(name: str) -> dict[str, Any]:
    return {"envvar": name, "show_envvar": True}


storage_option = click.option(
    "-o", "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE", **_env("ADMF_STORAGE_OPTIONS"),
    help="fsspec storage option, repeatable (e.g. -o endpoint_url=http://127.0.0.1:5000 -o anon=false); "
         "in the environment, space separated.")

performance_report_option = click.option(
    "--performance-report", "performance_report", is_flag=False, flag_value="", default=None, metavar="[PATH]",
    help="Save dask's performance report (task stream, worker profile, bandwidth) of the run's tasks as HTML: "
         "PATH, or without one beside run.json (local storage) or ./admf-performance-<run-id>.html "
         "(without PATH, put it after the command's arguments: the next word would be taken as PATH).")

wait_option = click.option(
    "--wait", is_flag=True,
    help="If another process is running this (exit 75 otherwise), wait until it finishes or its lease expires, "
         "then go on (finding its committed work done).")


def cluster_option(default: str | None = "local",
                   help: str = "threads, local, auto (the cluster of `admf cluster up` if it is up, else local) "
                               "or tcp://host:8786."):
    return click.option("--cluster", default=default, show_default=default is not None, help=help,
                        **_env("ADMF_CLUSTER"))


def memory_budget_option(help: str = "What one task may hold, e.g. 256MiB or 1GB (default: a share of the "  # noqa: A002
                                     "workers' memory limit); longer histories are read and backtested in time "
                                     "chunks."):
    return click.option("--memory-budget", metavar="SIZE", help=help, **_env("ADMF_MEMORY_BUDGET"))


def _session() -> Session:
    return click.get_current_context().ensure_object(Session)


def _fork_workers(cluster: Any, *, kernels: bool = True) -> None:
    """Before a command that may start a ``local`` cluster takes its lease (a thread): fork the zygote its
    workers will be forks of (:mod:`admf_dask.zygote`), in the ``admf`` command's own process only.
    ``kernels``: the zygote loads the sweep's task modules and kernels."""
    session = _session()
    if not session.own_stdout or cluster is None:
        return
    from .config import ClusterConfig

    kind = ClusterConfig.parse(cluster).kind
    if kind == "auto":
        from .keep import kept_address

        kind = "local" if kept_address()[0] is None else "kept"
    if kind == "local":
        from .zygote import start

        start(close=[session._json_out.fileno()] if session._json_out is not sys.stdout else [], kernels=kernels)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="admf-dask")
@click.option("--log-file", type=click.Path(dir_okay=False), **_env("ADMF_LOG_FILE"),
              help="Append messages to this file with UTC timestamps and levels (INFO; DEBUG with -v), with "
                   "Dask's own messages and the traceback of an unexpected error.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Debug messages, and Dask's own messages on stderr too.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object on stdout at the end, and nothing else on stdout: status, exit code, "
                   "times, run and set ids, counts, warnings (each step's, for `run`); also on failure.")
@click.option("--progress/--no-progress", default=None, **_env("ADMF_PROGRESS"),
              help="Progress bars on stderr (default: only when stderr is a terminal, and not with -q).")
@click.pass_context
def cli(ctx: click.Context, log_file: str | None, quiet: bool, verbose: bool, as_json: bool,
        progress: bool | None) -> None:
    """admf-dask: out-of-core backtesting and parameter sweeps on Dask.

    \b
    Start with the quickstart workflow:
        admf run workflows/quickstart.yaml
    \b
    Global options go before the command, e.g. for cron:
        admf --log-file admf.log --json run nightly.yaml > summary.json
    """
    session = ctx.ensure_object(Session)
    session.command, session.json, session.log_file = ctx.invoked_subcommand, as_json, log_file
    session.verbosity = 1 if verbose else -1 if quiet else 0
    if as_json:
        session.take_stdout()
    if progress is not None or quiet:
        os.environ["ADMF_PROGRESS"] = "1" if progress else "0"  # read by progress.Progress
    try:
        setup_logging(verbosity=session.verbosity, log_file=log_file)
    except OSError as exc:
        setup_logging(verbosity=session.verbosity)  # stderr only: the error is printed once, not by logging's last resort
        raise ConfigError(f"cannot open the log file: {exc.strerror or exc}", file=log_file,
                          hint="give a path in an existing, writable directory") from None
    session.warnings = ctx.with_resource(collect_warnings())
    log.info("admf %s %s on %s (pid %d)", __version__, session.command, socket.gethostname(), os.getpid(),
             extra=FILE_ONLY)
    from .faults import bar_cache_bytes

    bar_cache_bytes()  # read again by every worker that keeps bar files: a bad value stops here, in one line


@cli.command()
@click.argument("workflow", type=click.Path(dir_okay=False))
@cluster_option(None, "Override the workflow's cluster: threads, local, auto or tcp://host:8786.")
@click.option("--storage", help="Override the workflow's storage root (path or fsspec URL).", **_env("ADMF_STORAGE"))
@memory_budget_option("Override every step's memory_budget, e.g. 1GiB.")
@wait_option
@performance_report_option
@storage_option
def run(workflow: str, cluster: str | None, storage: str | None, memory_budget: str | None, wait: bool,
        performance_report: str | None, storage_options: tuple[str, ...]) -> None:
    """Run a YAML WORKFLOW (see workflows/quickstart.yaml).

    The whole file is validated first; steps then run in order on one cluster, and
    rerunning a finished workflow recomputes nothing. Options (or their ADMF_*
    variables) override the file's settings; -o options are merged over its
    storage_options. With --json the summary lists every step: kind, status, UTC
    start and finish, seconds, run or set ids, counts and warnings. While another
    process runs the same workflow (or one of its runs), this exits with 75, or
    waits with --wait. --performance-report gives every sweep, signals and replay step a
    performance report (a step's own performance_report key wins); PATH is then a directory.
    """
    from .workflow import load_workflow, run_workflow

    session = _session()
    session.data = {"file": os.path.abspath(workflow)}
    flow = load_workflow(workflow, cluster=cluster, storage=storage, memory_budget=memory_budget,
                         storage_options=_options(storage_options))
    session.data.update(workflow=flow.name, storage=flow.storage, cluster=flow.cluster.kind)
    session.steps = []
    _fork_workers(flow.cluster)  # before the workflow's lease; used if a step starts the cluster
    run_workflow(flow, echo=session.output, records=session.steps, wait=wait, performance_report=performance_report)


@cli.command()
@click.argument("store", metavar="STORE")
@click.option("--symbols", "n_symbols", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many symbols (named SYM000, SYM001, ...).")
@click.option("--symbol-list", help="Comma-separated symbol names instead of --symbols.")
@click.option("--start", default="2015-01-01", show_default=True, help="First date.")
@click.option("--end", default="2024-12-31", show_default=True, help="Last date (inclusive).")
@click.option("--freq", type=click.Choice(["daily", "minute"]), default="daily", show_default=True,
              help="daily: business days at 00:00 UTC; minute: 09:30-15:59 New York session.")
@click.option("--seed", type=int, default=42, show_default=True, help="Random seed; same seed, same bars.")
@click.option("--start-price", type=float, default=100.0, show_default=True)
@click.option("--drift", "annual_drift", type=float, default=0.05, show_default=True, help="Annual log drift.")
@click.option("--vol", "annual_vol", type=float, default=0.25, show_default=True, help="Annual volatility.")
@click.option("--granularity", type=click.Choice(["year", "decade", "symbol"]),
              help="Files of a new dataset: one per year, per decade or per symbol (default: from the bar "
                   "frequency, daily bars per symbol, minute bars per year). An existing dataset keeps its own.")
@cluster_option(None, "Generate on a cluster (threads, local, auto or tcp://host:8786); default: in process.")
@storage_option
def generate(store, n_symbols, symbol_list, start, end, freq, seed, start_price, annual_drift, annual_vol,
             granularity, cluster, storage_options) -> None:
    """Write synthetic OHLCV bars (geometric Brownian motion) into STORE.

    STORE is a dataset URL or path. Each symbol's bars depend only on the seed and
    its name, so adding symbols later leaves existing ones unchanged.
    """
    from .bars import BarStore, SyntheticSpec, generate_dataset, symbol_names
    from .preflight import check_cluster, ready_to_write
    from .storage import StorageRef

    session = _session()
    session.data = {"store": store}
    check_cluster(cluster)
    spec = SyntheticSpec(start, end, freq, seed, start_price, annual_drift, annual_vol)
    symbols = _symbol_list(symbol_list, "--symbol-list") or symbol_names(n_symbols)
    bar_store = BarStore(store, _options(storage_options))
    ready_to_write(StorageRef.make(store), dataset=True)
    if cluster:
        from .cluster import connect

        _fork_workers(cluster, kernels=False)  # its tasks call no kernel

        with connect(cluster) as client:
            manifest = generate_dataset(bar_store, symbols, spec, client=client, granularity=granularity)
    else:
        manifest = generate_dataset(bar_store, symbols, spec, granularity=granularity)
    rows = sum(manifest["symbols"][s]["rows"] for s in symbols)
    session.data.update(symbols=len(symbols), bars=rows, fingerprint=manifest["fingerprint"])
    session.output(f"wrote {len(symbols)} symbol(s), {rows:,} bars to {store}; "
                   f"fingerprint {manifest['fingerprint'][:12]}")


@cli.command()
@click.argument("store", metavar="STORE")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--symbol", help="Symbol for a single file without a symbol column (default: the file name).")
@click.option("--tz", default="UTC", show_default=True,
              help="Time zone of timestamps that carry no offset, e.g. America/New_York.")
@click.option("--mode", type=click.Choice(["merge", "append", "replace"]), default="merge", show_default=True,
              help="merge: add the bars to the stored ones by timestamp; append: only bars after the stored "
                   "last bar; replace: the files become the symbols' whole history.")
@click.option("--on-conflict", type=click.Choice(["new", "old"]),
              help="merge: a stored bar whose values differ from the new one at the same time is an error; "
                   "new takes the new bar, old keeps the stored one.")
@click.option("--repair", is_flag=True, help="Sort rows by time and drop exact duplicate rows, reporting each change.")
@click.option("--adjust", is_flag=True, help="Scale open/high/low/close by Adj Close / Close.")
@click.option("--timestamp-unit", type=click.Choice(["s", "ms", "us", "ns"]),
              help="Unit of epoch-number timestamps (default: told by their magnitude, e.g. Binance's ms).")
@click.option("--columns", help="Column names of a headerless file, comma-separated "
                                "(e.g. open_time,open,high,low,close,volume); extra columns are ignored.")
@click.option("--drop-missing", is_flag=True, help="Drop rows with missing values (Yahoo's null rows), "
                                                    "saying how many; without it such a row is an error.")
@click.option("--check", is_flag=True, help="Dry run: read and validate every file, report every bad one, "
                                             "write nothing (exit 2 if any is bad).")
@click.option("--granularity", type=click.Choice(["year", "decade", "symbol"]),
              help="Files of a new dataset: one per year, per decade or per symbol (default: from the bar "
                   "frequency, daily bars per symbol, minute bars per year). An existing dataset keeps its own.")
@storage_option
def ingest(store, files, symbol, tz, mode, on_conflict, repair, adjust, timestamp_unit, columns, drop_missing,
           check, granularity, storage_options) -> None:
    """Validate CSV or Parquet FILEs and add them to STORE, all or nothing.

    A file holds one symbol (named by --symbol or the file name) or many (a symbol
    or ticker column). Stored history is kept: by default the new bars are merged
    with the stored ones, and a bar that differs from the stored one at the same
    time stops the ingest (unless --on-conflict). --mode append takes only bars
    after the stored last one; --mode replace replaces the symbols' history and
    says how many stored rows it removed. One line per symbol says what changed.
    Any problem stops the ingest with the file, symbol, line or timestamp and the
    rule, and the store stays exactly as it was. Ingests into one store may run at
    the same time.

    \b
    Example (a nightly file of new bars):
        admf ingest data/bars vendor/2024-06-03/*.csv --mode append
    """
    from .bars import BarStore
    from .bars import ingest as do_ingest
    from .preflight import ready_to_write
    from .storage import StorageRef

    session = _session()
    session.data = {"store": store}
    if not check:
        ready_to_write(StorageRef.make(store), dataset=True)
    from .errors import DataError

    try:
        report = do_ingest(None if check else BarStore(store, _options(storage_options)), list(files),
                           symbol=symbol, tz=tz, repair=repair, adjust=adjust, storage_options=None, mode=mode,
                           on_conflict=on_conflict, timestamp_unit=timestamp_unit,
                           columns=columns.split(",") if columns is not None else None,
                           drop_missing=drop_missing, check=check, granularity=granularity)
    except DataError as exc:
        bad = getattr(exc, "report", None)  # --check: every bad file listed, then the one-line error
        if bad is not None:
            session.data.update(ingest_data(bad), problems=dict(bad.problems))
            session.output("\n".join(bad.lines()))
        raise
    session.data.update(ingest_data(report))
    if report.dropped:
        session.data["dropped"] = dict(report.dropped)
    session.output("\n".join(report.lines()))


@cli.command()
@click.argument("store", metavar="STORE")
@click.option("--granularity", type=click.Choice(["year", "decade", "symbol"]),
              help="One file per year, per decade or per symbol (default: from the bar frequency).")
@storage_option
def repack(store, granularity, storage_options) -> None:
    """Rewrite STORE's files at another granularity, all or nothing.

    The bars and every fingerprint stay the same (so run ids and caches keyed on
    them stay valid); readers see the old files or the new ones, never a mix. A
    dataset written before the manifest recorded each file's sha256 is rewritten at
    its own granularity to record it (reads then check it cheaply).
    """
    from .bars import BarStore

    session = _session()
    out = BarStore(store, _options(storage_options)).repack(granularity)
    session.data = {"store": store, **out}
    if out["from"] == out["to"] and out["rewritten"]:
        session.output(f"rewrote {out['rewritten']:,} files of {store} (stored by {out['to']}) to record the sha256 "
                       f"of their bytes, which reads check; fingerprint {str(out['fingerprint'])[:12]} (unchanged)")
    elif out["from"] == out["to"]:
        session.output(f"{store} is already stored by {out['to']} ({out['files_before']:,} files); nothing to do")
    else:
        session.output(f"repacked {out['symbols']} symbol(s) from {out['from']} to {out['to']}: "
                       f"{out['files_before']:,} -> {out['files_after']:,} files; "
                       f"fingerprint {str(out['fingerprint'])[:12]} (unchanged)")


def _param_spec(pair: str) -> tuple[str, object]:
    """``fast=5:50:5`` (inclusive range), ``slow=20,30,40`` (list) or ``k=2.0`` (one value)."""
    import yaml

    name, sep, value = pair.partition("=")
    if not sep or not name or not value:
        raise click.BadParameter(f"{pair!r} is not name=value", param_hint="-p/--param")
    if ":" in value:
        parts = [yaml.safe_load(v) for v in value.split(":")]
        if len(parts) not in (2, 3):
            raise click.BadParameter(f"{pair!r}: a range is name=from:to or name=from:to:step", param_hint="-p")
        return name, dict(zip(("from", "to", "step"), parts))
    if "," in value:
        return name, [yaml.safe_load(v) for v in value.split(",") if v]
    return name, yaml.safe_load(value)


@cli.command()
@click.argument("store", metavar="STORE")
@click.option("--strategy", "-s", required=True,
              help="Built-in (sma_cross, ema_cross, macd_cross, rsi_reversion, bollinger_reversion, "
                   "bollinger_breakout, donchian_breakout, momentum) or package.module:function.")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=SPEC",
              help="Repeatable: fast=5:50:5 (inclusive range), slow=20,30,40 (list), k=2.0 (fixed). "
                   "Unset parameters take the strategy's defaults.")
@click.option("--sample", type=click.IntRange(min=1), help="Run a seeded random sample of N sets of the grid.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option("--symbols", "symbol_list", help="Comma-separated symbols (default: all in STORE).")
@click.option("--start", help="First bar's date (default: the data's first).")
@click.option("--end", help="Last bar's date, inclusive (default: the data's last).")
@click.option("--direction", type=click.Choice(["long_short", "long_only", "short_only"]), default="long_short",
              show_default=True)
@click.option("--cash", type=float, default=10_000.0, show_default=True)
@click.option("--commission", type=float, default=0.0, show_default=True,
              help="Fraction of traded notional per fill, e.g. 0.001.")
@click.option("--slippage-bps", type=float, default=0.0, show_default=True)
@click.option("--whole-units", is_flag=True, help="Trade whole units only (default: fractional).")
@click.option("--stop-loss", type=float, help="Fraction of the entry price, e.g. 0.05.")
@click.option("--take-profit", type=float, help="Fraction of the entry price, e.g. 0.10.")
@click.option("--storage", default=".", show_default=True, **_env("ADMF_STORAGE"),
              help="Root for runs/ and cache/ (path or fsspec URL); storage options from -o apply to it.")
@cluster_option()
@click.option("--metric", default="sharpe", show_default=True, help="Statistic to rank the top rows by.")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--batch-seconds", type=float, default=0.5, show_default=True, help="Target work per task.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Retries of a failed task before the sweep fails.")
@click.option("--max-backtests", type=click.IntRange(min=1), default=10_000_000, show_default=True,
              help="Refuse bigger sweeps unless --yes.")
@click.option("--yes", is_flag=True, help="Run even when over --max-backtests.")
@click.option("--force", is_flag=True, help="Recompute a run that exists (finished or not).")
@memory_budget_option()
@wait_option
@performance_report_option
@storage_option
def sweep(store, strategy, params, sample, seed, symbol_list, start, end, direction, cash, commission,
          slippage_bps, whole_units, stop_loss, take_profit, storage, cluster, metric, top, batch_seconds,
          retries, max_backtests, yes, force, memory_budget, wait, performance_report, storage_options) -> None:
    """Sweep a strategy's parameters over the symbols of STORE on a Dask cluster.

    Results go to <storage>/runs/<run-id>/ (one row per parameter set and symbol),
    committed task by task: run the same command again after an interruption and it
    resumes; run it after it finished and it prints the result.

    \b
    Example:
        admf sweep data/generated/bars/quickstart -s sma_cross -p fast=5:50:5 -p slow=20:210:10 \\
            --direction long_only --commission 0.001
    """
    from .bars import BarStore
    from .cluster import connect
    from .preflight import check_cluster, ready_to_write
    from .storage import StorageRef
    from .sweep import SweepConfig, run_sweep

    options = _options(storage_options)
    check_cluster(cluster)  # a bad setting fails before run.json or a lease is written
    config = SweepConfig(strategy=strategy, params=dict(_param_spec(p) for p in params), sample=sample, seed=seed,
                         symbols=_symbol_list(symbol_list, "--symbols"),
                         start=start, end=end, direction=direction, cash=cash, commission=commission,
                         slippage_bps=slippage_bps, whole_units=whole_units, stop_loss=stop_loss,
                         take_profit=take_profit, metric=metric, top=top, batch_seconds=batch_seconds,
                         retries=retries, max_backtests=max_backtests, memory_budget=memory_budget)
    session = _session()
    session.data = {"store": store}
    bar_store = BarStore(store, options)
    bar_store.manifest  # a wrong STORE fails before a cluster starts
    root = StorageRef.make(storage, options)
    ready_to_write(root)
    _fork_workers(cluster)
    with ExitStack() as stack:  # the cluster starts only if there is work (a finished run just prints)
        result = run_sweep(config, bar_store, root,
                           lambda: stack.enter_context(connect(cluster)), force=force, yes=yes, echo=log.info,
                           wait=wait, performance_report=performance_report)
    session.data.update(run_data(result), top=top_records(result))
    session.output("\n".join([*result.lines(), format_top(result)]))


def _member(spec: str, direction: str) -> dict:
    """``sma_cross:fast=10,slow=50`` or ``package.module:function:window=5`` -> {strategy, params, direction}."""
    import yaml

    from .strategies import STRATEGIES

    strategy, _, rest = spec.partition(":")
    head, _, tail = rest.partition(":")
    if strategy.strip() not in STRATEGIES and head and "=" not in head and "," not in head:
        strategy, rest = f"{strategy}:{head}", tail  # a user strategy: package.module:function[:params]
    params = {}
    for pair in filter(None, rest.split(",")):
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{spec!r}: parameters are name=value, comma separated",
                                     param_hint="-c/--config")
        params[name.strip()] = yaml.safe_load(value)
    return {"strategy": strategy.strip(), "params": params, "direction": direction}


@cli.command()
@click.argument("store", metavar="STORE")
@click.option("--from-run", help="A finished sweep's run id (under --storage/runs), or 'last' (the sweep completed "
                                "last there): store its top configurations.")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many of --from-run's best parameter sets.")
@click.option("--metric", help="Rank --from-run's portfolio rows by this statistic (default: sharpe).")
@click.option("--config", "-c", "configs", multiple=True, metavar="STRATEGY:NAME=V,...",
              help="Repeatable, instead of --from-run: e.g. -c sma_cross:fast=10,slow=50 -c rsi_reversion:window=14 "
                   "(a user strategy: -c package.module:function:window=5).")
@click.option("--direction", type=click.Choice(["long_short", "long_only", "short_only"]), default="long_short",
              show_default=True, help="Direction mode of the -c configurations.")
@click.option("--symbols", "symbol_list", help="Comma-separated symbols for -c (default: all in STORE).")
@click.option("--start", help="First bar's date for -c (default: the data's first).")
@click.option("--end", help="Last bar's date for -c, inclusive.")
@click.option("--cash", type=float, default=10_000.0, show_default=True, help="Stored as the replay's default.")
@click.option("--commission", type=float, default=0.0, show_default=True, help="Stored as the replay's default.")
@click.option("--slippage-bps", type=float, default=0.0, show_default=True)
@click.option("--storage", default=".", show_default=True, help="Root for signals/, runs/ and cache/.",
              **_env("ADMF_STORAGE"))
@cluster_option()
@click.option("--force", is_flag=True, help="Rewrite the set even if it is complete.")
@memory_budget_option()
@wait_option
@performance_report_option
@storage_option
def signals(store, from_run, top, metric, configs, direction, symbol_list, start, end, cash, commission,
            slippage_bps, storage, cluster, force, memory_budget, wait, performance_report, storage_options) -> None:
    """Generate and store the signals of strategy configurations over STORE (phase 1 of replay).

    Each configuration's target series is stored per symbol as sparse change events
    under <storage>/signals/<set-id>/, manifest last. Replay it with `admf replay`.

    \b
    Examples:
        admf signals data/bars --from-run 3f2a... --top 3 --storage data
        admf signals data/bars --from-run last --top 3 --storage data
        admf signals data/bars -c sma_cross:fast=10,slow=50 -c sma_cross:fast=20,slow=100
    """
    from .bars import BarStore
    from .cluster import connect
    from .preflight import check_cluster, ready_to_write
    from .runs import resolve_last
    from .signals import SignalsConfig, generate_signals
    from .storage import StorageRef

    options = _options(storage_options)
    check_cluster(cluster)
    root = StorageRef.make(storage, options)
    if from_run == "last":
        from_run = resolve_last(root, "sweep")
        log.info("--from-run last: sweep run %s", from_run)
    config = SignalsConfig(configs=[_member(c, direction) for c in configs] if configs else None,
                           from_run=from_run, top=top, metric=metric,
                           symbols=_symbol_list(symbol_list, "--symbols"),
                           start=start, end=end, cash=cash, commission=commission, slippage_bps=slippage_bps,
                           memory_budget=memory_budget)
    session = _session()
    session.data = {"store": store}
    bar_store = BarStore(store, options)
    bar_store.manifest
    ready_to_write(root)
    _fork_workers(cluster)
    with ExitStack() as stack:
        result = generate_signals(config, bar_store, root, lambda: stack.enter_context(connect(cluster)),
                                  force=force, echo=log.info, wait=wait, performance_report=performance_report)
    session.data.update(signal_set_data(result))
    session.output("\n".join(format_signal_set(result)))


def _weights(text: str) -> list[list[float]]:
    try:
        return [[float(v) for v in vec.split(",")] for vec in text.split(";") if vec.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: weight vectors are comma-separated numbers, vectors separated by ;",
                                 param_hint="--weights") from None


@cli.command()
@click.argument("signals_id", metavar="SIGNALS")
@click.option("--store", help="The bar dataset (default: the one the set was made from).")
@click.option("--rule", type=click.Choice(["vote", "fraction"]), default="vote", show_default=True,
              help="vote: sign of the weighted sum when |sum| >= --threshold; fraction: the sum clipped to "
                   "[-1, 1] as a fraction of equity.")
@click.option("--threshold", type=float, default=0.5, show_default=True)
@click.option("--weights", help="Explicit weight vectors: '1,0,0;0.5,0.5,0' (K weights each, member order).")
@click.option("--grid", help="Values each weight takes, e.g. 0,0.5,1: the product over members.")
@click.option("--sample", type=click.IntRange(min=1), help="A seeded sample of N vectors (of --grid, or uniform).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--symbols", "symbol_list", help="Comma-separated subset of the set's symbols.")
@click.option("--direction", type=click.Choice(["long_short", "long_only", "short_only"]), default="long_short",
              show_default=True, help="Clip the combined target.")
@click.option("--commission", type=float, help="Override the set's commission.")
@click.option("--storage", default=".", show_default=True, help="Root for signals/ and runs/.", **_env("ADMF_STORAGE"))
@cluster_option()
@click.option("--metric", default="sharpe", show_default=True)
@click.option("--top", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--batch-seconds", type=float, default=0.5, show_default=True, help="Target work per task.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--max-backtests", type=click.IntRange(min=1), default=10_000_000, show_default=True)
@click.option("--yes", is_flag=True, help="Run even when over --max-backtests.")
@click.option("--force", is_flag=True, help="Recompute a replay run that exists.")
@memory_budget_option()
@wait_option
@performance_report_option
@storage_option
def replay(signals_id, store, rule, threshold, weights, grid, sample, seed, symbol_list, direction, commission,
           storage, cluster, metric, top, batch_seconds, retries, max_backtests, yes, force, memory_budget,
           wait, performance_report, storage_options) -> None:
    """Evaluate ensemble weights over the stored SIGNALS set (phase 2): no indicator is computed.

    SIGNALS is a set id printed by `admf signals` (under --storage/signals), a
    set's URL, or `last` (the set completed last under --storage). Results go to
    <storage>/runs/<run-id>/ like a sweep's, and resume the same way.

    \b
    Example:
        admf replay 9c1e... --grid 0,0.5,1 --rule vote --threshold 0.5 --storage data
    """
    from .bars import BarStore
    from .cluster import connect
    from .preflight import check_cluster, ready_to_write
    from .replay import ReplayConfig, best_weights, plan_replay, run_replay
    from .runs import resolve_last
    from .storage import StorageRef

    options = _options(storage_options)
    check_cluster(cluster)
    root = StorageRef.make(storage, options)
    if signals_id == "last":
        signals_id = resolve_last(root, "signals")
        log.info("SIGNALS last: signal set %s", signals_id)
    config = ReplayConfig(signals=signals_id, rule=rule, threshold=threshold,
                          weights=_weights(weights) if weights else None,
                          grid=_numbers(grid, "--grid") if grid is not None else None, sample=sample, seed=seed,
                          symbols=_symbol_list(symbol_list, "--symbols"),
                          direction=direction, commission=commission, metric=metric, top=top,
                          batch_seconds=batch_seconds, retries=retries, max_backtests=max_backtests,
                          memory_budget=memory_budget)
    session = _session()
    session.data = {"signals": signals_id}
    _, bar_store, _ = plan_replay(config, root, BarStore(store, options) if store else None)  # fail before a cluster
    ready_to_write(root)
    _fork_workers(cluster)
    with ExitStack() as stack:
        result = run_replay(config, root, lambda: stack.enter_context(connect(cluster)), bar_store, force=force,
                            yes=yes, echo=log.info, wait=wait, performance_report=performance_report)
    session.data.update(run_data(result), top=top_records(result))
    session.output("\n".join([*result.lines(), format_top(result), best_weights(result)]))


@cli.command()
@click.argument("store", metavar="STORE")
@storage_option
def symbols(store, storage_options) -> None:
    """List the symbols in STORE with their first and last bar and row counts."""
    from .bars import BarStore

    session = _session()
    session.data = {"store": store}
    bar_store = BarStore(store, _options(storage_options))
    info = bar_store.info()
    session.data.update(symbols=info.to_dict(orient="records"), bars=int(info["rows"].sum()),
                        fingerprint=bar_store.fingerprint)
    session.output("\n".join([info.to_string(index=False), f"{len(info)} symbol(s), {int(info['rows'].sum()):,} "
                                                           f"bars; dataset fingerprint {bar_store.fingerprint[:12]}"]))


@cli.command()
@click.argument("store", metavar="STORE")
@click.option("--symbols", "symbol_list", help="Comma-separated symbols to check (default: all).")
@storage_option
def verify(store, symbol_list, storage_options) -> None:
    """Check every data file of STORE against its manifest, as every read does.

    Each file's size and the sha256 of its bytes (datasets written before the
    manifest recorded that: of its bars) must be those recorded when it was
    committed. Lists every file that fails, then exits 2 with one error line.
    """
    from .bars import BarStore
    from .errors import StorageError

    session = _session()
    out = BarStore(store, _options(storage_options)).verify(_symbol_list(symbol_list, "--symbols"))
    damaged = out.pop("damaged")
    session.data = {"store": store, **out, "damaged": [{**e.where, "error": e.message} for e in damaged]}
    if damaged:
        session.output("\n".join(f"damaged: {e.message} [{', '.join(f'{k} {v}' for k, v in e.where.items())}]"
                                  for e in damaged))
        raise StorageError(f"{len(damaged):,} of {out['files']:,} data files do not hold what the manifest recorded "
                           f"(first: {damaged[0].where.get('symbol')} {damaged[0].where.get('file')})", file=store,
                           hint="write those symbols' bars again from their source (admf ingest STORE FILE --mode "
                                "replace, or the same admf generate: their files are written anew) or restore them")
    session.output(f"{out['files']:,} data files of {out['symbols']:,} symbol(s) ({out['bytes'] / 1e6:,.1f} MB) "
                   f"hold what the manifest recorded")


_signals: list[int] = []  # SIGINT/SIGTERM received by this process


def _on_signal(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM: hush the libraries and raise Interrupted, so the command unwinds (closing its
    cluster: the workers ignore SIGINT) and exits 130. A second signal while it unwinds leaves at once."""
    _signals.append(signum)
    if len(_signals) > 1:
        os.write(2, f"interrupted by {signal.Signals(signum).name} again: exiting without closing the cluster\n"
                    .encode())
        os._exit(INTERRUPTED)
    hush_libraries()
    raise Interrupted(signum)


@cli.group("runs")
def runs_group() -> None:
    """List, inspect and clean up the runs and signal sets under a storage root.

    \b
    Examples:
        admf runs list --storage data/generated
        admf runs show last --storage data/generated
        admf runs gc --keep 5 --dry-run --storage s3://bucket/admf
    """


storage_root = click.option("--storage", default=".", show_default=True,
                            help="Root holding runs/ and signals/ (path or fsspec URL).", **_env("ADMF_STORAGE"))


@runs_group.command("list")
@storage_root
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of the table.")
@storage_option
def runs_list(storage, as_json, storage_options) -> None:
    """One line per run and signal set, oldest first: id, kind, status, created, size, label.

    Status is complete, running (its lease is live: leased by host:pid), stale (its
    process died while working on it: the next run resumes it) or incomplete.
    """
    import json

    from .runs import list_lines, list_runs
    from .storage import StorageRef

    found = list_runs(StorageRef.make(storage, _options(storage_options)))
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in found], indent=1))
    else:
        click.echo("\n".join(list_lines(found)))


@runs_group.command("show")
@click.argument("run_id", metavar="RUN")
@storage_root
@storage_option
def runs_show(run_id, storage, storage_options) -> None:
    """The essentials of RUN (an id, a unique prefix of one, or `last`) and its summary."""
    from .runs import find_run, show_lines
    from .storage import StorageRef

    root = StorageRef.make(storage, _options(storage_options))
    click.echo("\n".join(show_lines(root, find_run(root, run_id))))


@runs_group.command("gc")
@click.option("--keep", type=click.IntRange(min=0), required=True,
              help="How many of the most recent runs of each kind (sweep, replay, signals) to keep.")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@storage_root
@storage_option
def runs_gc(keep, dry_run, storage, storage_options) -> None:
    """Delete all but the --keep most recent runs of each kind; print what was freed.

    Never deleted: a run in progress (its lease is live), the runs the latest pointers
    name (runs/latest-*.json, signals/latest.json, each workflow's), a sweep run that a
    signal set was made from, a signal set that a replay run replays.
    """
    from .runs import gc_runs
    from .storage import StorageRef

    report = gc_runs(StorageRef.make(storage, _options(storage_options)), keep, dry_run=dry_run)
    click.echo("\n".join(report.lines()))


@cli.group("cluster")
def cluster_group() -> None:
    """Keep a local Dask cluster running between commands; `--cluster auto` uses it.

    A command that starts its own cluster (--cluster local) spends 1-2 s starting worker
    processes and loading kernels in them. `admf cluster up` starts them once, in the
    background; every command given `--cluster auto` (or ADMF_CLUSTER=auto) then connects
    to them, and starts a local cluster of its own when none is up (or when the kept one
    runs older admf code than the command). The record is cluster.json in the user's cache
    (ADMF_CACHE_DIR, else ~/.cache/admf-dask), its log cluster.log beside it.

    \b
    Examples:
        admf cluster up --workers 2
        admf sweep data/bars -s sma_cross -p fast=5:50:5 -p slow=20:210:10 --cluster auto
        admf cluster status
        admf cluster down
    """


@cluster_group.command("up")
@click.option("--workers", "n_workers", type=click.IntRange(min=1), help="Worker processes (default: the cores).")
@click.option("--threads-per-worker", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--memory-limit", default="auto", show_default=True, help="Per worker, e.g. 4GiB (auto: a share of "
                                                                          "the machine's memory).")
@click.option("--dashboard-address", default=":8787", show_default=True,
              help="Where the dashboard listens ('' for none; another port if it is taken).")
def cluster_up(n_workers, threads_per_worker, memory_limit, dashboard_address) -> None:
    """Start the kept cluster in the background (nothing to do if it is up); print its address."""
    from .keep import up

    state, started = up({"n_workers": n_workers, "threads_per_worker": threads_per_worker,
                         "memory_limit": memory_limit, "dashboard_address": dashboard_address})
    session = _session()
    session.data = {"cluster": state, "started": started}
    session.output(f"{'kept cluster up' if started else 'already up'}: {state['address']}, {state['workers']} "
                   f"worker(s), {state['threads']} thread(s), pid {state['pid']}; dashboard "
                   f"{state.get('dashboard') or '(off)'}; use it with --cluster auto, stop it with `admf cluster down`")


@cluster_group.command("down")
def cluster_down() -> None:
    """Stop the kept cluster (its workers end; nothing to do if none is up)."""
    from .keep import down

    said = down()
    session = _session()
    session.data = {"note": said}
    session.output(said)


@cluster_group.command("status")
def cluster_status() -> None:
    """Whether a kept cluster is up: its address, workers, threads, pid, dashboard and start time."""
    from .keep import status

    state = status()
    session = _session()
    session.data = {"cluster": state}
    if state["up"]:
        stale = "" if state.get("code_matches") else "; runs older admf code: --cluster auto does not use it"
        session.output(f"up: {state['address']}, {state['workers']} worker(s), {state['threads']} thread(s), "
                       f"pid {state['pid']}, since {state['started']}; dashboard "
                       f"{state.get('dashboard') or '(off)'}{stale}")
    else:
        session.output(f"down: {state['note']}")


@cli.command("report")
@click.argument("run_id", metavar="RUN|latest")
@storage_root
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="The HTML file to write (default: report-<run id>.html in the current directory).")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Parameter sets in the table.")
@click.option("--metric", help="The metric to rank and map (default: the run's, else sharpe).")
@click.option("--symbol", help="The symbol whose price and trades are drawn (default: the run's first).")
@click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
              **_env("ADMF_STORAGE_OPTIONS"), help="fsspec storage option, repeatable.")
def report_cmd(run_id, storage, output, top, metric, symbol, storage_options) -> None:
    """Write one self-contained HTML report (no network needed) of a finished sweep or replay.

    RUN is an id, a unique prefix of one, or `latest`. Prints the file's path.
    """
    from .reports import write_report
    from .runresult import load_run
    from .storage import StorageRef

    result = load_run(StorageRef.make(storage, _options(storage_options)), run_id)
    if symbol is not None and symbol not in result.run.get("symbols", []):
        from .errors import ConfigError

        raise ConfigError(f"symbol {symbol!r} is not in run {result.run_id}", key="symbol",
                          hint=f"symbols: {', '.join(result.run.get('symbols', [])[:10])}")
    if metric is not None:
        from .sweep.grid import check_metric

        check_metric(metric)
    path = write_report(result, output or f"report-{result.run_id}.html", top=top, metric=metric, symbol=symbol)
    click.echo(str(path))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI; map errors to one line on stderr and an exit code (see the module doc)."""
    args = sys.argv[1:] if argv is None else list(argv)
    session = Session(own_stdout=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
    code, status, error, summary = 0, "ok", None, True
    try:
        returned = cli.main(args=args, prog_name="admf", standalone_mode=False, obj=session)
        code = returned if isinstance(returned, int) else 0
        summary = session.command is not None  # not for --help or --version
    except click.exceptions.Exit as exc:
        code, summary = exc.exit_code, False
    except click.ClickException as exc:  # usage errors, bad option values: one line
        error = " ".join(exc.format_message().split())
        path = getattr(getattr(exc, "ctx", None), "command_path", None)
        click.echo(f"error: {error}" + (f" (see '{path} --help')" if path else ""), err=True)
        code, status = BAD_INPUT, "failed"
    except RecursionError as exc:  # nested input deeper than Python's stack: not worth a 3,000-line traceback
        code, status, error = session.fail(ConfigError("input nested too deeply to read",
                                                       hint=f"{type(exc).__name__}: simplify the input"))
    except click.exceptions.Abort:  # click's own prompts
        click.echo("interrupted", err=True)
        code, status, error = INTERRUPTED, "interrupted", "aborted"
    except (Exception, KeyboardInterrupt, Interrupted) as exc:
        from .faults import user_error

        mapped = user_error(exc) if isinstance(exc, Exception) else None
        code, status, error = session.fail(mapped or exc)
    log.info("admf %s: %s, exit %d after %.1fs", session.command, status, code, time.perf_counter() - session.t0,
             extra=FILE_ONLY)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: os._exit(code or INTERRUPTED))  # the outcome is known: just go
        signal.signal(signal.SIGTERM, lambda *_: os._exit(code or INTERRUPTED))
    if summary and (session.json or "--json" in args):
        session.print_json(code, status, error)
    if argv is None:  # the console command: exit handlers run, then no interpreter teardown
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> None:
    """Run the exit handlers, flush, and end the process without tearing the interpreter down.

    After a sweep, freeing every module and object (numba's, pandas', distributed's) took
    0.3-2 s of the command's wall time for nothing. Exit handlers (``atexit``: clusters
    opened by ``ensure_client``, logging) still run; only the command line does this, not
    ``main(argv)`` called from Python.
    """
    import atexit

    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
