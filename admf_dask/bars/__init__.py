"""Market data: the bar schema, the Parquet bar store, CSV/Parquet ingest and synthetic bars."""

from .ingest import IngestReport, ingest, read_source
from .schema import ARROW_SCHEMA, COLUMNS, SCHEMA_VERSION, VALUE_COLUMNS, Bars, check_symbol, validate_arrays
from .store import MANIFEST, BarStore, Update, write_symbol_files
from .update import SymbolChange
from .synthetic import SyntheticSpec, bar_timestamps, generate_bars, generate_dataset, symbol_names

__all__ = [
    "ARROW_SCHEMA", "COLUMNS", "MANIFEST", "SCHEMA_VERSION", "VALUE_COLUMNS", "BarStore", "Bars",
    "IngestReport", "SyntheticSpec", "bar_timestamps", "check_symbol", "generate_bars", "ingest",
    "generate_dataset", "read_source", "symbol_names", "SymbolChange", "Update", "validate_arrays",
    "write_symbol_files",
]
