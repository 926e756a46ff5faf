"""The report's tables: CSV and JSON results as HTML tables a browser shows."""

import json

import numpy as np
import pandas as pd
from report_html import html_tables

from histo_wsss.report_tables import (
    SORTABLE_ROWS,
    TURNED_ROWS,
    WIDE_COLUMNS,
    json_table,
    page,
    write_table_page,
)

SUMMARY = {  # shaped like the classifier's and segmentation's evaluation.json
    split: {"n": n, "auc": auc, "confusion": {"tp": tp, "fp": 0}, "truth": {"pooled": {"iou": iou}}}
    for split, n, auc, tp, iou in (("test", 4, 0.75, 2, 1 / 2), ("val", 6, None, 3, 1 / 3))
}


def test_a_json_result_is_a_row_per_metric_and_a_column_per_split_in_split_order():
    facts, table = json_table({"has_ground_truth": True, "n_images": 24, "per_split": SUMMARY})
    assert facts == {"has_ground_truth": True, "n_images": 24}
    assert list(table.columns) == ["metric", "val", "test"]  # train, val, test, all
    assert list(table["metric"]) == [
        "per_split n",
        "per_split auc",
        "per_split confusion tp",
        "per_split confusion fp",
        "per_split truth pooled iou",
    ]
    rows = html_tables(page("t", "s.json", table, facts))[0]
    assert rows[1] == ["per_split n", "6", "4"]  # counts stay integers beside scores
    assert rows[2] == ["per_split auc", "", "0.7500"]  # undefined: an empty cell
    assert rows[5] == ["per_split truth pooled iou", "0.3333", "0.5000"]


def test_a_csv_becomes_a_table_with_its_columns_and_empty_cells_for_missing_values(tmp_path):
    n = SORTABLE_ROWS + 1
    table = pd.DataFrame(
        {
            "name": [f"img<{i}>" for i in range(n)],
            "iou": [np.nan] + [i / 7 for i in range(1, n)],
            "normalized": [True] * n,
        }
    )
    table.to_csv(tmp_path / "t.csv", index=False)
    write_table_page(tmp_path / "t.csv", tmp_path / "t.html", "Per image")
    text = (tmp_path / "t.html").read_text()
    [rows] = html_tables(text)
    assert rows[0] == ["name", "iou", "normalized"]
    assert rows[1] == ["img<0>", "", "True"] and rows[2] == ["img<1>", "0.1429", "True"]
    assert len(rows) == n + 1 and "<h1>Per image</h1>" in text and "t.csv" in text
    # long tables sort by a click on a header; the script is inline (nothing fetched)
    assert '<table class="sortable">' in text and "addEventListener" in text
    assert "http" not in text and "src=" not in text


def test_a_short_table_has_no_sort_script(tmp_path):
    (tmp_path / "e.json").write_text(json.dumps(SUMMARY))
    write_table_page(tmp_path / "e.json", tmp_path / "e.html", "Evaluation")
    text = (tmp_path / "e.html").read_text()
    assert "<script>" not in text and len(html_tables(text)[0]) == 6


def test_a_short_wide_csv_is_shown_a_column_per_row_and_a_narrow_one_as_it_is(tmp_path):
    scores = {f"score_{i}": [i / 8, 1 / 3] for i in range(WIDE_COLUMNS)}
    wide = pd.DataFrame({"split": ["test", "val"], "n_images": [40, 32], **scores})
    assert len(wide) <= TURNED_ROWS and len(wide.columns) > WIDE_COLUMNS
    for table, name in ((wide, "wide"), (wide.iloc[:, :WIDE_COLUMNS], "narrow")):
        table.to_csv(tmp_path / f"{name}.csv", index=False)
        write_table_page(tmp_path / f"{name}.csv", tmp_path / f"{name}.html", name)
    [rows] = html_tables((tmp_path / "wide.html").read_text())
    assert rows[0] == ["split", "test", "val"] and len(rows) == len(wide.columns)
    assert rows[1] == ["n_images", "40", "32"]  # counts stay integers beside the scores
    assert rows[2] == ["score_0", "0.0000", "0.3333"] and rows[-1][0] == f"score_{WIDE_COLUMNS - 1}"
    [rows] = html_tables((tmp_path / "narrow.html").read_text())
    assert rows[0] == ["split", "n_images", *list(scores)[: WIDE_COLUMNS - 2]] and len(rows) == 3
