"""Reading and writing the table files VLMEvalKit uses, without pandas.

VLMEvalKit keeps every dataset and every predictions file as a pandas
DataFrame: `pd.read_csv(f, sep='\\t')` for TSV, `pd.read_excel` for XLSX,
and writes them back with `to_csv(..., quoting=csv.QUOTE_ALL)`.  What a
prompt or a score sees is therefore a cell *as pandas parsed it*, and that
is not always the text in the file:

* the strings pandas treats as missing (``''``, ``'NA'``, ``'N/A'``,
  ``'None'``, ``'nan'``, ``'null'``, ...) become NaN, so an option whose
  text is "None" disappears from an MCQ prompt;
* a column whose every value is an integer becomes int64, and if some are
  missing it becomes float64, so "3" is rendered "3.0" in such a column;
* a column of numbers is float64 and renders with Python's float repr.

This module reproduces those rules (`render_tsv_columns`, `render_typed`)
and hands the rest of the package plain rows: ``dict`` column -> ``str`` or
``None`` (missing).  Writers use QUOTE_ALL TSV/CSV with ``\\n`` line ends
(what pandas writes on Linux), XLSX through openpyxl (a dependency; a clear
error if it is missing all the same) with every time stamp fixed, so that one
table is always the same bytes, and JSON as a list of records.
"""

import csv
import io
import json
import math
import os
import re
import sys
import zipfile

import numpy as np

from .errors import DatasetError

# pandas.read_csv / read_excel default na_values (pandas >= 2.0 adds 'None').
PANDAS_NA = frozenset([
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
    "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
    "nan", "null",
])
_TRUE = frozenset(["True", "TRUE", "true"])
_FALSE = frozenset(["False", "FALSE", "false"])
# What pandas' C parser takes for numbers: ASCII digits, surrounding blanks allowed.
_INT_RE = re.compile(r"^\s*[+-]?[0-9]+\s*$")
_FLOAT_RE = re.compile(r"^\s*[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|inf|infinity)\s*$", re.IGNORECASE)
_INT_MIN, _UINT_MAX = -(2 ** 63), 2 ** 64 - 1

PRED_FORMATS = ("xlsx", "tsv", "json")  # the first is the default


# Let the csv module read base64 images (fields far over 128 KiB); sys.maxsize fits a C long on POSIX,
# the only systems tgllava.eval runs on (runner.py locks with fcntl).
csv.field_size_limit(sys.maxsize)


# ----------------------------------------------------------------- rendering

def _is_int_text(v):
    return bool(_INT_RE.match(v)) and _INT_MIN <= int(v) <= _UINT_MAX


def is_missing(v):
    """NaN in pandas' eyes: None, float NaN, or one of the NA strings."""
    if v is None:
        return True
    if isinstance(v, str):
        return v in PANDAS_NA
    return isinstance(v, float) and math.isnan(v)


def _numeric(v):
    if isinstance(v, (int, float)):  # bool included: next to numbers pandas reads True as 1
        return True
    return isinstance(v, str) and bool(_FLOAT_RE.match(v))


def _integral(v):
    if isinstance(v, int):
        return True
    if isinstance(v, float):
        return v.is_integer()
    return _is_int_text(v)


def _boolish(v):
    return isinstance(v, bool) or (isinstance(v, str) and (v in _TRUE or v in _FALSE))


def coerce_column(values):
    """One column's cells as pandas types them after reading (read_csv or read_excel).

    `values` are str (TSV text, XLSX text cells), int, float, bool or None.
    NA cells become None.  If every other cell is a number or reads as one
    the column is numeric: int when all are integral and none is missing,
    otherwise float.  If every other cell is a boolean (True/TRUE/true/...)
    they become bools.  Otherwise the column is "object" and each cell keeps
    its own type (a text "14" stays a string next to a text "B").  Real
    boolean cells (XLSX) count as numbers next to numbers or missing cells;
    in mixed object columns pandas sometimes turns them into 0/1, which is
    not modelled (VLMEvalKit's prediction files hold no boolean cells).
    """
    cells = [None if is_missing(v) else v for v in values]
    present = [v for v in cells if v is not None]
    if not present:
        return cells
    has_na = len(present) < len(cells)
    all_bool_cells = all(isinstance(v, bool) for v in present)
    if all(_numeric(v) for v in present) and (has_na or not all_bool_cells):
        if not has_na and all(_integral(v) for v in present):
            return [int(v) for v in cells]
        return [None if v is None else float(v) for v in cells]
    if all(_boolish(v) for v in present):
        return [None if v is None else (v if isinstance(v, bool) else v in _TRUE) for v in cells]
    # object column: read_excel hands integral floats over as ints
    return [int(v) if isinstance(v, float) and v.is_integer() else v for v in cells]


def render_float(x):
    """A float64 cell as pandas writes it (repr), NaN as missing."""
    x = float(x)
    return None if math.isnan(x) else repr(x)


def render_tsv_columns(columns, rows, skip=()):
    """Turn raw TSV strings into cells as `pd.read_csv(sep='\\t')` sees them.

    `rows` are dicts of raw strings (None for a short row); they are changed
    in place: NA strings become None, int columns are normalised ("007" ->
    "7"), int columns with missing cells and float columns render as floats
    ("3" -> "3.0"), boolean columns ("true", "FALSE", ...) as "True"/"False".
    Columns in `skip` (the base64 `image`) only get NA detection.
    """
    for col in columns:
        values = [row.get(col) for row in rows]
        if col in skip:
            typed = [None if is_missing(v) else v for v in values]
        else:
            typed = [render_value(v) for v in coerce_column(values)]
        for row, v in zip(rows, typed):
            row[col] = v
    return rows


# ------------------------------------------------------------------- reading

def read_tsv_raw(path, delimiter="\t"):
    """Header and rows of raw strings (no NA or type handling).

    Parsed as strictly as pandas' read_csv, which VLMEvalKit uses: a quote
    that is never closed (it would swallow the rest of the file into one
    cell) and a record with more fields than the header are DatasetErrors
    naming the line where the record starts.
    """
    try:
        f = open(path, "r", encoding="utf-8-sig", newline="")
    except OSError as e:
        raise DatasetError(f"cannot open {path}: {e}") from e
    with f:
        ran_out = []  # set when the reader asks for a line after the last one

        def lines():
            yield from f
            ran_out.append(True)

        # the reader asks for more after the last line only inside a quoted field, so a record
        # returned once `ran_out` is set ran into the end of the file with a quote still open
        reader = csv.reader(lines(), delimiter=delimiter)
        header, rows = None, []
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DatasetError(f"{path}: line {start}: {e}") from None
            if ran_out:
                raise DatasetError(
                    f"{path}: line {start}: a quoted field opened here is never closed (the rest of the "
                    "file would be read as one cell); close or remove the stray quote")
            if header is None:
                header = fields
                continue
            if not fields:
                continue
            if len(fields) > len(header):
                raise DatasetError(
                    f"{path}: line {start}: {len(fields)} fields, but the header has {len(header)}")
            rows.append(dict(zip(header, fields)) | dict.fromkeys(header[len(fields):]))
    if header is None:
        raise DatasetError(f"{path} is empty")
    return header, rows


def read_table(path, skip_render=()):
    """Read a .tsv/.csv/.xlsx/.json table as (columns, rows) of rendered cells."""
    ext = os.path.splitext(str(path))[1].lower().lstrip(".")
    if ext in ("tsv", "csv"):
        columns, rows = read_tsv_raw(path, "\t" if ext == "tsv" else ",")
        return columns, render_tsv_columns(columns, rows, skip=skip_render)
    if ext in ("xlsx", "json"):  # typed cells, rendered as pandas would after loading them
        columns, rows = _read_xlsx(path) if ext == "xlsx" else _read_json(path)
        return columns, render_tsv_columns(columns, rows)
    raise DatasetError(f"{path}: unknown table format '.{ext}' (expected .tsv, .csv, .xlsx or .json)")


def check_format_available(fmt):
    """Raise DatasetError now if files of format `fmt` could not be written (xlsx without openpyxl)."""
    if fmt == "xlsx":
        _openpyxl()


def _openpyxl():
    try:
        import openpyxl
    except ImportError:
        raise DatasetError(
            "reading or writing .xlsx files needs openpyxl, a dependency of tgllava that is not installed "
            "(pip install openpyxl); or use the tsv or json format (--pred-format tsv)") from None
    return openpyxl


def _read_xlsx(path):
    openpyxl = _openpyxl()
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises many kinds for bad files
        raise DatasetError(f"cannot read {path} as xlsx: {e}") from e
    try:
        it = wb.worksheets[0].iter_rows(values_only=True)
        header = next(it, None)
        if header is None:
            raise DatasetError(f"{path} is empty")
        columns = ["" if h is None else str(h) for h in header]
        while columns and columns[-1] == "":
            columns.pop()
        rows = []
        for values in it:
            if values is None or all(v is None for v in values):
                continue
            rows.append(dict(zip(columns, values)) | dict.fromkeys(columns[len(values):]))
    finally:
        wb.close()
    return columns, rows


def _read_json(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read {path} as json: {e}") from e
    if isinstance(data, dict) and "columns" in data and "data" in data:
        columns = [str(c) for c in data["columns"]]
        rows = [dict(zip(columns, r)) for r in data["data"]]
        return columns, rows
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DatasetError(f"{path}: expected a JSON list of records")
    columns = list(dict.fromkeys(k for r in data for k in r))
    rows = [{c: r.get(c) for c in columns} for r in data]
    return columns, rows


# ------------------------------------------------------------------- writing

def _atomic_open(path):
    tmp = f"{path}.tmp{os.getpid()}"
    return tmp, open(tmp, "w", encoding="utf-8", newline="")


def write_delimited(path, columns, rows, delimiter="\t"):
    """Write QUOTE_ALL TSV/CSV as pandas' to_csv(quoting=QUOTE_ALL) does; atomic."""
    tmp, f = _atomic_open(path)
    with f:
        w = csv.writer(f, delimiter=delimiter, quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(columns)
        w.writerows([["" if row.get(c) is None else row[c] for c in columns] for row in rows])
    os.replace(tmp, path)


_XLSX_ILLEGAL = re.compile(r"[\000-\010]|[\013-\014]|[\016-\037]")
_XLSX_TIME = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")  # docProps/core.xml's created, modified
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def write_xlsx(path, columns, rows):
    """Write an .xlsx table (text cells, never formulas), the same bytes for the same table; needs openpyxl."""
    openpyxl = _openpyxl()
    from openpyxl.cell import WriteOnlyCell
    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet()

    def cell(v):
        if v is None:
            return None
        c = WriteOnlyCell(ws, value=_XLSX_ILLEGAL.sub("", str(v)))
        c.data_type = "s"  # a leading '=' must stay text, as xlsxwriter's strings_to_formulas=False
        return c

    ws.append([cell(c) for c in columns])
    for row in rows:
        ws.append([cell(row.get(c)) for c in columns])
    saved = io.BytesIO()
    wb.save(saved)
    tmp = f"{path}.tmp{os.getpid()}.xlsx"
    with zipfile.ZipFile(saved) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():  # the same parts, their save times replaced by a fixed one
            data = zin.read(info)
            if info.filename == "docProps/core.xml":
                data = _XLSX_TIME.sub(b"1980-01-01T00:00:00Z", data)
            zout.writestr(zipfile.ZipInfo(info.filename, _FIXED_TIME), data, zipfile.ZIP_DEFLATED)
    os.replace(tmp, path)


def write_json(path, columns, rows):
    """Write a list of records like VLMEvalKit's dump_json."""
    dump_json(path, [{c: row.get(c) for c in columns} for row in rows])


def dump_json(path, obj):
    """Write `obj` as JSON (indent 4, UTF-8) like VLMEvalKit's dump_json; atomic."""
    tmp, f = _atomic_open(path)
    with f:
        json.dump(obj, f, indent=4, ensure_ascii=False)
    os.replace(tmp, path)


def write_table(path, columns, rows):
    """Write by extension: .tsv, .csv, .xlsx or .json."""
    ext = os.path.splitext(str(path))[1].lower().lstrip(".")
    if ext in ("tsv", "csv"):
        write_delimited(path, columns, rows, "\t" if ext == "tsv" else ",")
    elif ext == "xlsx":
        write_xlsx(path, columns, rows)
    elif ext == "json":
        write_json(path, columns, rows)
    else:
        raise DatasetError(f"{path}: unknown table format '.{ext}'")


def render_value(v):
    """A typed cell as text, as pandas writes it: repr for floats (NumPy numbers too), None for NaN/None."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return "True" if v else "False"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float) or hasattr(v, "__float__") and not isinstance(v, str):
        return render_float(v)
    return str(v)


def write_score_csv(path, columns, rows):
    """Write a score table (cells: numbers or strings) as VLMEvalKit's dump(csv).

    A column holding ints and floats is float64 in pandas, so its ints are
    written "3.0"; that is reproduced here.
    """
    float_columns = {c for c in columns if any(_is_floaty(r.get(c)) for r in rows)}

    def cell(c, v):
        if c in float_columns and v is not None and not isinstance(v, str):
            return render_float(v)
        return render_value(v)

    write_delimited(path, columns, [{c: cell(c, r.get(c)) for c in columns} for r in rows], ",")


def _is_floaty(v):
    """A cell that makes its column float64 in pandas: missing (NaN), or a number that is not an int."""
    return v is None or not isinstance(v, (str, bool, int, np.integer, np.bool_))
