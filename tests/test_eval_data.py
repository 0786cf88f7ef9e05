"""Dataset files and tables: lookup, images, pandas-like cells, writers."""

import json
import os

import pytest
from eval_testing import png_b64, without_openpyxl, write_tsv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from tgllava.errors import TgError
from tgllava.eval.benchmarks import find_benchmark, is_circular
from tgllava.eval.data import load_dataset, parse_list_cell
from tgllava.eval.errors import DatasetError
from tgllava.eval.tables import read_table, render_tsv_columns, write_table

RED, BLUE = png_b64((255, 0, 0), (8, 6)), png_b64((0, 0, 255), (5, 7))


def test_lookup_by_name_under_lmudata(tmp_path, monkeypatch):
    write_tsv(str(tmp_path / "POPE.tsv"), [dict(index=1, image=RED, question="Q", answer="Yes")])
    monkeypatch.setenv("LMUData", str(tmp_path))
    ds = load_dataset("POPE")
    assert ds.name == "POPE" and ds.kind == "Y/N" and len(ds) == 1
    with pytest.raises(DatasetError, match="LMUData"):
        load_dataset("NoSuchBench")
    with pytest.raises(TgError):
        load_dataset(str(tmp_path / "missing.tsv"))


def test_images_references_lists_and_skipped_rows(tmp_path):
    path = write_tsv(str(tmp_path / "MMBench_DEV_EN.tsv"), [
        dict(index=0, image=RED, question="q0", A="a", B="b", answer="A"),
        dict(index=1, image=BLUE, question="q1", A="a", B="b", answer="B"),
        dict(index=2, image="", question="no image: skipped", A="a", B="b", answer="A"),
        dict(index=1000000, image="0", question="q0 rotated", A="b", B="a", answer="B"),
        dict(index=3, image=str([RED, BLUE]), question="two pictures", A="a", B="b", answer="A"),
    ])
    ds = load_dataset(path)
    assert [r["index"] for r in ds.rows] == ["0", "1", "1000000", "3"]
    assert ds.image_keys[0] == ds.image_keys[2] != ds.image_keys[1]
    img = ds.images(ds.rows[2])
    assert img.size == (8, 6) and img.getpixel((0, 0)) == (255, 0, 0)
    pics = ds.images(ds.rows[3])
    assert [p.size for p in pics] == [(8, 6), (5, 7)] and ds.n_images(ds.rows[3]) == 2
    assert is_circular(ds.name)


def test_same_picture_without_reference_shares_a_key(tmp_path):
    ds = load_dataset(write_tsv(str(tmp_path / "MME.tsv"), [
        dict(index=0, image=RED, question="a", answer="Yes", category="color"),
        dict(index=1, image=RED, question="b", answer="No", category="color"),
    ]))
    assert ds.image_keys[0] == ds.image_keys[1]


def test_only_an_index_of_the_same_file_is_an_image_reference(tmp_path):
    """As in VLMEvalKit, a short image cell refers to another row only when it is that row's index;
    anything else is the picture itself, and a bad one makes a bad row, not a load error."""
    ds = load_dataset(write_tsv(str(tmp_path / "X.tsv"), [
        dict(index=0, image=RED, question="q", answer="x"),
        dict(index=1, image="0", question="reuses row 0", answer="x"),
        dict(index=2, image="7", question="no row 7: not a reference", answer="x"),
        dict(index=3, image="1", question="row 1 has no image of its own", answer="x"),
        dict(index=4, image="QUJD", question="short valid base64, not a picture", answer="x"),
    ]))
    assert ds.image_keys[1] == ds.image_keys[0] and ds.images(ds.rows[1]).size == (8, 6)
    assert set(ds.row_errors) == {3} and "reuses the image of row 1, which has no image of its own" in ds.row_errors[3]
    with pytest.raises(DatasetError, match=r"row 2: its image cell '7' is not base64"):
        ds.images(ds.rows[2])
    with pytest.raises(DatasetError, match=r"row 4: its image cell 'QUJD' decodes to 3 bytes that are not a picture") as e:
        ds.images(ds.rows[4])
    assert "BytesIO" not in str(e.value) and "reuses" not in str(e.value)


def test_image_path_datasets(tmp_path):
    from PIL import Image
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (4, 4), (0, 255, 0)).save(tmp_path / "pics" / "g.png")
    ds = load_dataset(write_tsv(str(tmp_path / "Custom.tsv"), [
        dict(index=0, image_path="pics/g.png", question="What colour?", answer="green")]))
    assert ds.images(ds.rows[0]).getpixel((1, 1)) == (0, 255, 0)
    assert ds.image_keys[0].startswith("path:")
    bad = load_dataset(write_tsv(str(tmp_path / "Bad.tsv"), [
        dict(index=0, image_path="nope.png", question="q", answer="a")]))
    assert bad.image_keys == [None] and "nope.png" in bad.row_errors[0]


def dataset_rules(name, columns=(), rows=()):
    bench = find_benchmark(name, columns, rows)
    return bench.kind, bench.scorer


def test_dataset_kinds_by_name_then_columns():
    assert dataset_rules("MMBench_DEV_EN") == ("MCQ", "mcq")
    assert dataset_rules("MME") == ("Y/N", "mme")
    assert dataset_rules("MMERealWorld")[0] != "Y/N"
    assert dataset_rules("HallusionBench") == ("Y/N", "hallusion")
    assert dataset_rules("TextVQA_VAL") == ("VQA", "textvqa")
    assert dataset_rules("OCRBench") == ("VQA", "ocrbench")
    assert dataset_rules("mine", ["A", "B"], []) == ("MCQ", "mcq")
    assert dataset_rules("mine", ["answer"], [{"answer": "Yes"}, {"answer": "No"}]) == ("Y/N", "yorn")
    assert dataset_rules("mine", ["answer"], [{"answer": "cat"}]) == ("VQA", "vqa")


def test_parse_list_cell():
    assert parse_list_cell("['a', 'b']") == ["a", "b"]
    assert parse_list_cell("abc") == ["abc"]
    with pytest.raises(DatasetError):
        parse_list_cell("[not python]")


def test_pandas_like_cells():
    rows = [{"i": "007", "f": "1.5", "g": "3", "b": "True", "t": "None", "n": "NA"},
            {"i": "2", "f": "2", "g": "", "b": "false", "t": "x", "n": "null"}]
    render_tsv_columns(["i", "f", "g", "b", "t", "n"], rows)
    assert rows == [{"i": "7", "f": "1.5", "g": "3.0", "b": "True", "t": None, "n": None},
                    {"i": "2", "f": "2.0", "g": None, "b": "False", "t": "x", "n": None}]


def test_tsv_writer_is_quote_all_with_newlines(tmp_path):
    p = str(tmp_path / "o.tsv")
    write_table(p, ["index", "prediction", "x"], [{"index": "1", "prediction": 'say "hi"\tnow', "x": None}])
    with open(p, "rb") as f:
        assert f.read() == b'"index"\t"prediction"\t"x"\n"1"\t"say ""hi""\tnow"\t""\n'
    cols, rows = read_table(p)
    assert cols == ["index", "prediction", "x"] and rows == [{"index": "1", "prediction": 'say "hi"\tnow', "x": None}]


def test_json_roundtrip(tmp_path):
    p = str(tmp_path / "o.json")
    write_table(p, ["index", "prediction"], [{"index": "1", "prediction": "é"}])
    assert json.load(open(p, encoding="utf-8")) == [{"index": "1", "prediction": "é"}]
    assert read_table(p)[1] == [{"index": "1", "prediction": "é"}]


def test_xlsx_roundtrip(tmp_path):
    p = str(tmp_path / "o.xlsx")
    rows = [{"index": "1", "prediction": "=SUM(A1)", "A": "None"}, {"index": "2", "prediction": "B", "A": "x"}]
    write_table(p, ["index", "prediction", "A"], rows)
    cols, back = read_table(p)
    assert cols == ["index", "prediction", "A"]
    # a leading '=' stays text; 'None' reads as missing, as pandas.read_excel does
    assert back == [{"index": "1", "prediction": "=SUM(A1)", "A": None}, {"index": "2", "prediction": "B", "A": "x"}]


def test_xlsx_without_openpyxl_is_a_clear_error(tmp_path, monkeypatch):
    without_openpyxl(monkeypatch)
    with pytest.raises(DatasetError, match="pip install openpyxl"):
        write_table(str(tmp_path / "o.xlsx"), ["a"], [{"a": "1"}])
    with pytest.raises(DatasetError, match="openpyxl"):
        read_table(str(tmp_path / "o.xlsx"))


def test_malformed_tsv(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("index\tquestion\n1\tq\textra\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 2: 3 fields, but the header has 2"):
        read_table(str(p))
    p.write_text("question\nq\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="index"):
        load_dataset(str(p))


def test_unterminated_quote_is_an_error_naming_its_line(tmp_path):
    """pandas (VLMEvalKit's reader) raises on a quote that is never closed; reading on would swallow
    every later row into one cell and run the benchmark on fewer rows."""
    rows = [dict(index=i, image=RED, question=f"q{i}", answer="x") for i in range(5)]
    path = write_tsv(str(tmp_path / "X.tsv"), rows)
    lines = open(path, encoding="utf-8").read().splitlines(keepends=True)
    lines[3] = lines[3].replace("\tq2\t", '\t"q2 is quoted but never closed\t')
    open(path, "w", encoding="utf-8").write("".join(lines))
    with pytest.raises(DatasetError, match=r"X\.tsv: line 4: a quoted field opened here is never closed"):
        load_dataset(path)
    # a quoted field over several lines, and text after a closing quote (pandas keeps it), stay fine
    path = tmp_path / "ok.tsv"
    path.write_text('index\tquestion\n1\t"two\nlines"\n2\t"ab"c\n', encoding="utf-8")
    assert read_table(str(path))[1] == [{"index": "1", "question": "two\nlines"}, {"index": "2", "question": "abc"}]
