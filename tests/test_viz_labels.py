"""viz figures (issue 23 item 10): words in titles and captions stand apart ("DP off", not "DPoff": the
default font's space is 2-3 pixels, so words are drawn with a gap of a third of the text height), and
the panel size (--size / size=) and the PNG's recorded resolution (--dpi) can be chosen; text, bars and
margins scale with panels above viz.PANEL_SIZE.  Runs on the tiny demo checkpoint (tgllava.fixtures)."""

import os

import numpy as np
import pytest
from PIL import Image

import tgllava
from tgllava import cli, viz
from tgllava.fixtures import build


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    llm, clip, image = build(str(tmp_path_factory.mktemp("viz") / "demo"))
    return tgllava.load(llm, progress=False), image


def widest_blank(img, top, bottom):
    """The widest run of ink-free columns between the first and last inked column of rows top..bottom."""
    ink = (np.asarray(img.convert("L"))[top:bottom] < 200).any(axis=0)
    cols = np.flatnonzero(ink)
    best = run = 0
    for has_ink in ink[cols[0]:cols[-1] + 1]:
        run = 0 if has_ink else run + 1
        best = max(best, run)
    return best


@pytest.mark.parametrize("title", ["DP off", "LLM attention", "baseline (FOM, DP off)"])
def test_words_in_titles_stand_apart(title):
    fig = viz.figure([(title, Image.new("RGB", (240, 10), "white"))])
    gap = widest_blank(fig, viz.MARGIN, viz.MARGIN + viz.TITLE_HEIGHT)
    solid = widest_blank(viz.figure([(title.replace(" ", ""), Image.new("RGB", (240, 10), "white"))]),
                         viz.MARGIN, viz.MARGIN + viz.TITLE_HEIGHT)
    assert gap >= viz.TEXT_SIZE // 3 and gap >= 2 * solid, (gap, solid)


def test_a_title_wider_than_its_panel_widens_the_column():
    narrow, title = Image.new("RGB", (10, 10), "red"), "a long title over a narrow panel"
    alone = np.asarray(viz.figure([(title, narrow)]).convert("L"))[viz.MARGIN:viz.MARGIN + viz.TITLE_HEIGHT]
    title_end = np.flatnonzero((alone < 200).any(axis=0))[-1]
    fig = viz.figure([(title, narrow), ("B", narrow)])
    second = fig.width - viz.MARGIN - 10  # where panel B (and its title) starts
    assert second > title_end and fig.getpixel((second, viz.MARGIN + viz.TITLE_HEIGHT)) == (255, 0, 0)


def test_text_scales_the_layout():
    img, amap = Image.new("RGB", (40, 40)), np.arange(16.0).reshape(4, 4)
    assert viz.overlay(img, amap, size=96, text_size=2 * viz.TEXT_SIZE).size == \
        (96 + 2 * (viz.BAR_GAP + viz.BAR_WIDTH + viz.LABEL_WIDTH), 96)
    fig = viz.figure([("A", Image.new("RGB", (50, 40)))], caption="Q", text_size=2 * viz.TEXT_SIZE)
    M, T = 2 * viz.MARGIN, 2 * viz.TITLE_HEIGHT  # twice the text: twice the margins and title rows
    assert fig.size == (M + 50 + M, M + T + T + 40 + M)
    with pytest.raises(ValueError, match="text_size"):
        viz.figure([("A", img)], text_size=0)


def test_build_figure_size(demo):
    m, image = demo
    M, T = viz.MARGIN, viz.TITLE_HEIGHT
    small = viz.build_figure(m, image, "What is red?", size=200)
    assert small.height == 2 * M + 2 * T + 200  # caption row, title row, panels
    big = viz.build_figure(m, image, "What is red?", size=2 * viz.PANEL_SIZE)  # text and margins double
    assert big.height == 2 * (2 * M + 2 * T) + 2 * viz.PANEL_SIZE
    with pytest.raises(ValueError, match="size"):
        viz.build_figure(m, image, "q", size=0)


def test_cli_size_and_dpi(capsys, demo, tmp_path):
    m, image = demo
    out = tmp_path / "fig.png"
    argv = ["viz", "--model", m.llm_dir, "--image", image, "--question", "What is red?", "--out", str(out)]
    assert cli.main(argv + ["--size", "160", "--dpi", "300"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as fig:
        assert fig.height == 2 * viz.MARGIN + 2 * viz.TITLE_HEIGHT + 160
        assert [round(d) for d in fig.info["dpi"]] == [300, 300]
    assert cli.main(argv) == 0
    with Image.open(out) as fig:
        assert fig.height == 2 * viz.MARGIN + 2 * viz.TITLE_HEIGHT + m.image_size and "dpi" not in fig.info
    for bad in (["--size", "0"], ["--dpi", "-1"]):
        assert cli.main(argv + bad) == 1
        assert bad[0] in capsys.readouterr().err
    assert os.path.isfile(out)
