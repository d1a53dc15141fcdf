"""The ``admf`` command: a thin click group; heavy imports happen inside the commands.

Every error on bad input prints one line ``error: <what> [<where>]; <hint>`` on
stderr and exits with status 2; a run or workflow another process is running exits
with 75 (``BusyError``) unless ``--wait`` is given.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack

import click

from . import __version__
from .errors import AdmfError

STORE_HELP = "Dataset URL or path: a local directory, file://, s3://bucket/prefix, memory://..."


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


storage_option = click.option(
    "-o", "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
    help="fsspec storage option, repeatable (e.g. -o endpoint_url=http://127.0.0.1:5000 -o anon=false).")

wait_option = click.option(
    "--wait", is_flag=True,
    help="If another process is running this (exit 75 otherwise), wait until it finishes or its lease expires, "
         "then go on (finding its committed work done).")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="admf-dask")
def cli() -> None:
    """admf-dask: out-of-core backtesting and parameter sweeps on Dask.

    \b
    Start with the quickstart workflow:
        admf run workflows/quickstart.yaml
    """


@cli.command()
@click.argument("workflow", type=click.Path(dir_okay=False))
@click.option("--cluster", help="Override the workflow's cluster: threads, local or tcp://host:8786.")
@click.option("--storage", help="Override the workflow's storage root (path or fsspec URL).")
@wait_option
def run(workflow: str, cluster: str | None, storage: str | None, wait: bool) -> None:
    """Run a YAML WORKFLOW (see workflows/quickstart.yaml).

    The whole file is validated first; steps then run in order on one cluster, and
    rerunning a finished workflow recomputes nothing. ADMF_CLUSTER and ADMF_STORAGE
    override the file's settings. While another process runs the same workflow (or
    one of its runs), this exits with 75, or waits with --wait.
    """
    from .workflow import load_workflow, run_workflow

    run_workflow(load_workflow(workflow, cluster=cluster, storage=storage), wait=wait)


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
@click.option("--cluster", default=None,
              help="Generate on a cluster (threads, local or tcp://host:8786); default: in process.")
@storage_option
def generate(store, n_symbols, symbol_list, start, end, freq, seed, start_price, annual_drift, annual_vol,
             cluster, storage_options) -> None:
    """Write synthetic OHLCV bars (geometric Brownian motion) into STORE.

    STORE is a dataset URL or path. Each symbol's bars depend only on the seed and
    its name, so adding symbols later leaves existing ones unchanged.
    """
    from .bars import BarStore, SyntheticSpec, generate_dataset, symbol_names

    spec = SyntheticSpec(start, end, freq, seed, start_price, annual_drift, annual_vol)
    symbols = [s.strip() for s in symbol_list.split(",") if s.strip()] if symbol_list else symbol_names(n_symbols)
    bar_store = BarStore(store, _options(storage_options))
    if cluster:
        from .cluster import connect

        with connect(cluster) as client:
            manifest = generate_dataset(bar_store, symbols, spec, client=client)
    else:
        manifest = generate_dataset(bar_store, symbols, spec)
    rows = sum(manifest["symbols"][s]["rows"] for s in symbols)
    click.echo(f"wrote {len(symbols)} symbol(s), {rows:,} bars to {store}; fingerprint {manifest['fingerprint'][:12]}")


@cli.command()
@click.argument("store", metavar="STORE")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--symbol", help="Symbol for a single file without a symbol column (default: the file name).")
@click.option("--tz", default="UTC", show_default=True,
              help="Time zone of timestamps that carry no offset, e.g. America/New_York.")
@click.option("--repair", is_flag=True, help="Sort rows by time and drop exact duplicate rows, reporting each change.")
@click.option("--adjust", is_flag=True, help="Scale open/high/low/close by Adj Close / Close.")
@storage_option
def ingest(store, files, symbol, tz, repair, adjust, storage_options) -> None:
    """Validate CSV or Parquet FILEs and add them to STORE, all or nothing.

    A file holds one symbol (named by --symbol or the file name) or many (a symbol
    or ticker column). Any problem stops the ingest with the file, symbol, line and
    rule, and the store stays exactly as it was. Symbols already in STORE are replaced.
    """
    from .bars import BarStore
    from .bars import ingest as do_ingest

    report = do_ingest(BarStore(store, _options(storage_options)), list(files), symbol=symbol, tz=tz,
                       repair=repair, adjust=adjust, storage_options=None)
    for line in report.lines():
        click.echo(line)


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
@click.option("--storage", default=".", show_default=True,
              help="Root for runs/ and cache/ (path or fsspec URL); storage options from -o apply to it.")
@click.option("--cluster", default="local", show_default=True, help="threads, local or tcp://host:8786.")
@click.option("--metric", default="sharpe", show_default=True, help="Statistic to rank the top rows by.")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--batch-seconds", type=float, default=0.5, show_default=True, help="Target work per task.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Retries of a failed task before the sweep fails.")
@click.option("--max-backtests", type=click.IntRange(min=1), default=10_000_000, show_default=True,
              help="Refuse bigger sweeps unless --yes.")
@click.option("--yes", is_flag=True, help="Run even when over --max-backtests.")
@click.option("--force", is_flag=True, help="Recompute a run that exists (finished or not).")
@click.option("--memory-budget", metavar="SIZE",
              help="What one task may hold, e.g. 256MiB or 1GB (default: a share of the workers' memory limit); "
                   "longer histories are read and backtested in time chunks.")
@wait_option
@storage_option
def sweep(store, strategy, params, sample, seed, symbol_list, start, end, direction, cash, commission,
          slippage_bps, whole_units, stop_loss, take_profit, storage, cluster, metric, top, batch_seconds,
          retries, max_backtests, yes, force, memory_budget, wait, storage_options) -> None:
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
    from .storage import StorageRef
    from .sweep import SweepConfig, run_sweep

    options = _options(storage_options)
    config = SweepConfig(strategy=strategy, params=dict(_param_spec(p) for p in params), sample=sample, seed=seed,
                         symbols=[s.strip() for s in symbol_list.split(",")] if symbol_list else None,
                         start=start, end=end, direction=direction, cash=cash, commission=commission,
                         slippage_bps=slippage_bps, whole_units=whole_units, stop_loss=stop_loss,
                         take_profit=take_profit, metric=metric, top=top, batch_seconds=batch_seconds,
                         retries=retries, max_backtests=max_backtests, memory_budget=memory_budget)
    bar_store = BarStore(store, options)
    bar_store.manifest  # a wrong STORE fails before a cluster starts
    with ExitStack() as stack:  # the cluster starts only if there is work (a finished run just prints)
        result = run_sweep(config, bar_store, StorageRef.make(storage, options),
                           lambda: stack.enter_context(connect(cluster)), force=force, yes=yes,
                           echo=lambda m: click.echo(m, err=True), wait=wait)
    for line in result.lines():
        click.echo(line)
    click.echo(format_top(result))


def _member(spec: str, direction: str) -> dict:
    """``sma_cross:fast=10,slow=50`` -> {strategy, params, direction}."""
    import yaml

    strategy, _, rest = spec.partition(":")
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
              help="Repeatable, instead of --from-run: e.g. -c sma_cross:fast=10,slow=50 -c rsi_reversion:window=14.")
@click.option("--direction", type=click.Choice(["long_short", "long_only", "short_only"]), default="long_short",
              show_default=True, help="Direction mode of the -c configurations.")
@click.option("--symbols", "symbol_list", help="Comma-separated symbols for -c (default: all in STORE).")
@click.option("--start", help="First bar's date for -c (default: the data's first).")
@click.option("--end", help="Last bar's date for -c, inclusive.")
@click.option("--cash", type=float, default=10_000.0, show_default=True, help="Stored as the replay's default.")
@click.option("--commission", type=float, default=0.0, show_default=True, help="Stored as the replay's default.")
@click.option("--slippage-bps", type=float, default=0.0, show_default=True)
@click.option("--storage", default=".", show_default=True, help="Root for signals/, runs/ and cache/.")
@click.option("--cluster", default="local", show_default=True, help="threads, local or tcp://host:8786.")
@click.option("--force", is_flag=True, help="Rewrite the set even if it is complete.")
@click.option("--memory-budget", metavar="SIZE",
              help="What one task may hold, e.g. 256MiB or 1GB (default: a share of the workers' memory limit); "
                   "longer histories are read and backtested in time chunks.")
@wait_option
@storage_option
def signals(store, from_run, top, metric, configs, direction, symbol_list, start, end, cash, commission,
            slippage_bps, storage, cluster, force, memory_budget, wait, storage_options) -> None:
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
    from .runs import resolve_last
    from .signals import SignalsConfig, generate_signals
    from .storage import StorageRef

    options = _options(storage_options)
    root = StorageRef.make(storage, options)
    if from_run == "last":
        from_run = resolve_last(root, "sweep")
        click.echo(f"--from-run last: sweep run {from_run}", err=True)
    config = SignalsConfig(configs=[_member(c, direction) for c in configs] if configs else None,
                           from_run=from_run, top=top, metric=metric,
                           symbols=[x.strip() for x in symbol_list.split(",")] if symbol_list else None,
                           start=start, end=end, cash=cash, commission=commission, slippage_bps=slippage_bps,
                           memory_budget=memory_budget)
    bar_store = BarStore(store, options)
    bar_store.manifest
    with ExitStack() as stack:
        result = generate_signals(config, bar_store, root, lambda: stack.enter_context(connect(cluster)),
                                  force=force, echo=lambda m: click.echo(m, err=True), wait=wait)
    click.echo("\n".join(format_signal_set(result)))


def format_signal_set(signal_set) -> list[str]:
    size = signal_set.size()
    lines = [f"signal set {signal_set.set_id} at {signal_set.ref.url}: {len(signal_set.members)} member(s) x "
             f"{len(signal_set.symbols)} symbol(s), {size['events']:,} change events, {size['bytes']:,} bytes "
             f"(dense int8: {size['dense_int8_bytes']:,})"]
    lines += [f"  {k}: {m.label}" for k, m in enumerate(signal_set.members)]
    return lines


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
@click.option("--storage", default=".", show_default=True, help="Root for signals/ and runs/.")
@click.option("--cluster", default="local", show_default=True, help="threads, local or tcp://host:8786.")
@click.option("--metric", default="sharpe", show_default=True)
@click.option("--top", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--batch-seconds", type=float, default=0.5, show_default=True, help="Target work per task.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--max-backtests", type=click.IntRange(min=1), default=10_000_000, show_default=True)
@click.option("--yes", is_flag=True, help="Run even when over --max-backtests.")
@click.option("--force", is_flag=True, help="Recompute a replay run that exists.")
@click.option("--memory-budget", metavar="SIZE",
              help="What one task may hold, e.g. 256MiB or 1GB (default: a share of the workers' memory limit); "
                   "longer histories are read and backtested in time chunks.")
@wait_option
@storage_option
def replay(signals_id, store, rule, threshold, weights, grid, sample, seed, symbol_list, direction, commission,
           storage, cluster, metric, top, batch_seconds, retries, max_backtests, yes, force, memory_budget,
           wait, storage_options) -> None:
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
    from .replay import ReplayConfig, best_weights, plan_replay, run_replay
    from .runs import resolve_last
    from .storage import StorageRef

    options = _options(storage_options)
    root = StorageRef.make(storage, options)
    if signals_id == "last":
        signals_id = resolve_last(root, "signals")
        click.echo(f"SIGNALS last: signal set {signals_id}", err=True)
    config = ReplayConfig(signals=signals_id, rule=rule, threshold=threshold,
                          weights=_weights(weights) if weights else None,
                          grid=[float(v) for v in grid.split(",") if v] if grid else None, sample=sample, seed=seed,
                          symbols=[x.strip() for x in symbol_list.split(",")] if symbol_list else None,
                          direction=direction, commission=commission, metric=metric, top=top,
                          batch_seconds=batch_seconds, retries=retries, max_backtests=max_backtests,
                          memory_budget=memory_budget)
    _, bar_store, _ = plan_replay(config, root, BarStore(store, options) if store else None)  # fail before a cluster
    with ExitStack() as stack:
        result = run_replay(config, root, lambda: stack.enter_context(connect(cluster)), bar_store, force=force,
                            yes=yes, echo=lambda m: click.echo(m, err=True), wait=wait)
    for line in result.lines():
        click.echo(line)
    click.echo(format_top(result))
    click.echo(best_weights(result))


def format_top(result) -> str:
    """The top rows of a sweep (or replay) as a table: parameters, symbol and the main statistics."""
    names = result.config.param_names()
    cols = ["symbol", *names, result.config.metric, "total_return", "sharpe", "max_drawdown", "n_trades"]
    top = result.top()[list(dict.fromkeys(cols))]
    return f"top {len(top)} by {result.config.metric}:\n" + top.to_string(index=False, float_format=lambda v: f"{v:.4g}")


@cli.command()
@click.argument("store", metavar="STORE")
@storage_option
def symbols(store, storage_options) -> None:
    """List the symbols in STORE with their first and last bar and row counts."""
    from .bars import BarStore

    bar_store = BarStore(store, _options(storage_options))
    info = bar_store.info()
    click.echo(info.to_string(index=False))
    click.echo(f"{len(info)} symbol(s), {int(info['rows'].sum()):,} bars; dataset fingerprint "
               f"{bar_store.fingerprint[:12]}")


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
                            help="Root holding runs/ and signals/ (path or fsspec URL).")


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


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning AdmfError into one line and exit 2."""
    try:
        cli.main(args=argv, prog_name="admf", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except AdmfError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
