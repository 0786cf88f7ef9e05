"""VLMEvalKit dataset files: finding, reading, images, dataset kinds.

A dataset is a VLMEvalKit TSV: `index`, `image` (base64; or, when it is 64
characters or fewer and equal to the `index` of another row, a reference to
that row's image; or a Python-literal list of base64 images), optional
`image_path`, `question`,
`hint`, options `A`..`Z`, `answer`, `category`, `l2-category`, `split` and
whatever else the benchmark carries.  `load_dataset` accepts a path or a
name looked up as ``$LMUData/<name>.tsv`` (default ``~/LMUData``), the way
VLMEvalKit's `LMUDataRoot` does, and mirrors `ImageBaseDataset.__init__`
(vlmeval/dataset/image_base.py): rows whose `image` is missing are skipped,
short `image` cells that name another row's index are resolved to that
row's image, and cells are read as pandas would read them (see tables.py).

A row whose picture cannot be had - a reference to a row without an image
of its own, a missing image file, text that does not decode to a picture -
is a *bad row*: `row_errors` holds a readable reason for the ones found
when the file is loaded, `images(row)` raises DatasetError for the others,
and the runner records such rows as failed instead of stopping.

Each row gets an *image key*: a hash of its resolved image bytes (or the
resolved file path for path-only datasets).  Rows that show the same
picture - MMBench's circular rotations, MME's two questions per image -
share a key; the runner passes it to the model so the vision tower runs
once per picture, keeps such rows in one shard and schedules them
together.

A dataset's family (kind, prompt, answer budget, scoring) is the record of
benchmarks.py that its name, else its columns, selects.
"""

import ast
import base64
import hashlib
import io
import os

from .benchmarks import find_benchmark
from .errors import DatasetError
from .tables import read_table


def lmu_data_root():
    """$LMUData if it names a folder, else ~/LMUData (VLMEvalKit's LMUDataRoot)."""
    env = os.environ.get("LMUData")
    if env and os.path.isdir(env):
        return env
    return os.path.join(os.path.expanduser("~"), "LMUData")


def resolve_dataset_path(data):
    """(name, path) for a dataset name or a path to a .tsv file."""
    data = os.fspath(data)
    if os.path.isfile(data):
        name = os.path.splitext(os.path.basename(data))[0]
        return name, data
    if data.lower().endswith((".tsv", ".xlsx", ".json", ".csv")) or os.sep in data:
        raise DatasetError(f"dataset file {data} does not exist")
    root = lmu_data_root()
    for fname in (f"{data}.tsv", f"{data}_local.tsv"):
        path = os.path.join(root, fname)
        if os.path.isfile(path):
            return data, path
    raise DatasetError(
        f"dataset '{data}' not found: no {data}.tsv in {root} "
        "(set $LMUData or pass the path of the TSV)")


def parse_list_cell(s):
    """VLMEvalKit's toliststr: '[...]' is a Python list literal, else one item."""
    if isinstance(s, str) and len(s) > 1 and s[0] == "[" and s[-1] == "]":
        try:
            value = ast.literal_eval(s)
        except (ValueError, SyntaxError) as e:
            raise DatasetError(f"cannot parse list cell {s[:60]!r}: {e}") from e
        if isinstance(value, (list, tuple)):
            return [str(x) for x in value]
    return [s]


class Dataset:
    """One benchmark: rows, their images and the rules that apply to it.

    Attributes: `name`, `path`, `columns` (file order, with `image`), `rows` (list of dicts, cells
    str or None), `benchmark` (its family in benchmarks.py) with its `kind` (MCQ, Y/N, VQA) and
    `scorer`, `image_keys` (one per row; None for a bad row), `row_errors` ({position: reason} of
    the rows whose picture is known to be unusable).  Images are decoded on demand by `images(row)`.
    """

    def __init__(self, name, path, columns, rows, meta_only=False):
        self.name = name
        self.path = path
        self.columns = list(columns)
        self.rows = rows
        self.benchmark = find_benchmark(name, self.columns, rows)
        self._by_index = {}
        for pos, row in enumerate(rows):
            idx = row.get("index")
            if idx is None:
                raise DatasetError(f"{path}: row {pos + 1} has no index")
            if idx in self._by_index:
                raise DatasetError(f"{path}: index {idx} appears twice")
            self._by_index[idx] = pos
        self._image_src = {}
        self.image_keys = [None] * len(rows)
        self.row_errors = {}
        if not meta_only:
            for pos, row in enumerate(rows):
                try:
                    self.image_keys[pos] = self._image_key(row)
                except DatasetError as e:
                    self.row_errors[pos] = str(e)

    def __len__(self):
        return len(self.rows)

    @property
    def kind(self):
        return self.benchmark.kind

    @property
    def scorer(self):
        return self.benchmark.scorer

    @property
    def has_images(self):
        return "image" in self.columns or "image_path" in self.columns

    def row(self, index):
        """The row with this index (a string, as in the file)."""
        pos = self._by_index.get(str(index))
        if pos is None:
            raise DatasetError(f"{self.name}: no row with index {index}")
        return self.rows[pos]

    def position(self, index):
        return self._by_index.get(str(index))

    # ---------------------------------------------------------------- images
    def _resolved_image_cell(self, row):
        """The base64 text (or list literal) of a row, following a reference to another row.

        As in VLMEvalKit, a reference is a cell of 64 characters or fewer that is the
        index of a row of the same file; any other cell is the image itself.
        """
        cell = row.get("image")
        if cell is None or len(cell) > 64 or cell not in self._by_index:
            return cell
        ref = self.rows[self._by_index[cell]].get("image")
        if ref is None or len(ref) <= 64:
            raise DatasetError(
                f"{self.name}: row {row['index']} reuses the image of row {cell}, which has no image of its own")
        return ref

    def _image_paths(self, row):
        paths = self._list_cell(row, row["image_path"])
        out = []
        roots = [os.path.dirname(os.path.abspath(self.path)) if self.path else "",
                 os.path.join(lmu_data_root(), "images", self.name)]
        for p in paths:
            if os.path.isabs(p) and os.path.exists(p):
                out.append(p)
                continue
            for root in roots:
                cand = os.path.join(root, p)
                if os.path.exists(cand):
                    out.append(os.path.abspath(cand))
                    break
            else:
                raise DatasetError(
                    f"{self.name}: row {row['index']}: image {p} not found (tried {', '.join(roots)})")
        return out

    def _image_key(self, row):
        if "image" in self.columns:
            cell = self._resolved_image_cell(row)
            if cell is None:
                return None
            key = self._image_src.get(id(cell))
            if key is None:
                key = "b2:" + hashlib.blake2b(cell.encode("ascii", "replace"), digest_size=16).hexdigest()
                self._image_src[id(cell)] = key
            return key
        if "image_path" in self.columns and row.get("image_path") is not None:
            return "path:" + "|".join(self._image_paths(row))
        return None

    def images(self, row):
        """The row's picture(s): a PIL image, or a list when the row has several."""
        from PIL import Image

        if "image" in self.columns:
            cell = self._resolved_image_cell(row)
            if cell is None:
                raise DatasetError(f"{self.name}: row {row['index']} has no image")
            imgs = [self._decode_image(row, b) for b in self._list_cell(row, cell)]
        else:
            imgs = []
            for p in self._image_paths(row):
                try:
                    with Image.open(p) as im:
                        imgs.append(im.convert("RGB"))
                except Exception as e:
                    raise DatasetError(f"{self.name}: row {row['index']}: cannot open {p}: {e}") from e
        return imgs[0] if len(imgs) == 1 else imgs

    def _list_cell(self, row, cell):
        """parse_list_cell, its error naming the row."""
        try:
            return parse_list_cell(cell)
        except DatasetError as e:
            raise DatasetError(f"{self.name}: row {row['index']}: {e}") from None

    def _decode_image(self, row, text):
        """One base64 picture of a row as a PIL RGB image; a DatasetError with a readable reason if it is not one."""
        from PIL import Image, UnidentifiedImageError

        where = f"{self.name}: row {row['index']}"
        shown = text if len(text) <= 24 else text[:24] + "..."
        try:
            data = base64.b64decode(text)
        except ValueError as e:  # binascii.Error
            raise DatasetError(f"{where}: its image cell {shown!r} is not base64 ({e}) nor the index of "
                               "another row") from None
        try:
            with Image.open(io.BytesIO(data)) as im:
                return im.convert("RGB")
        except UnidentifiedImageError:
            raise DatasetError(f"{where}: its image cell {shown!r} decodes to {len(data)} bytes that are not "
                               "a picture in a format PIL reads") from None
        except Exception as e:  # truncated data, a decompression bomb, ...
            raise DatasetError(f"{where}: its image cannot be decoded: {type(e).__name__}: {e}") from None

    def n_images(self, row):
        if "image" in self.columns:
            return len(self._list_cell(row, self._resolved_image_cell(row)))
        return len(self._list_cell(row, row["image_path"]))


def load_dataset(data):
    """Load a dataset by name (under $LMUData) or path; return a Dataset.

    Rows without an image are dropped when the file has an `image` column
    (VLMEvalKit's skip_noimg); a dataset with neither `image` nor
    `image_path` cannot be run (but can still be scored).
    """
    return data if isinstance(data, Dataset) else Dataset(*_read_rows(data))


def _read_rows(data):
    """(name, path, columns, rows) of a dataset file, rows without an image dropped (skip_noimg)."""
    name, path = resolve_dataset_path(data)
    columns, rows = read_table(path, skip_render=("image",))
    if "index" not in columns:
        raise DatasetError(f"{path}: no 'index' column")
    if "image" in columns:
        rows = [r for r in rows if r.get("image") is not None]
    return name, path, columns, rows


def load_dataset_meta(data):
    """Like load_dataset but without keeping image text: for scoring only."""
    if isinstance(data, Dataset):
        return data
    name, path, columns, rows = _read_rows(data)
    if "image" in columns:
        for r in rows:
            r["image"] = None
        columns = [c for c in columns if c != "image"]
    return Dataset(name, path, columns, rows, meta_only=True)
