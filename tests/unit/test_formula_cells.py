import pandas as pd
import pytest

from pipeline.scoring.formula_cells import neutralise, neutralise_frame


@pytest.mark.parametrize(
    "cell",
    [
        "=1+1",
        '=HYPERLINK("http://evil.example","click")',
        "+cmd|' /C calc'!A0",
        "-2+3",
        "@SUM(A1:A2)",
        "\t=1",
        "\r=1",
        "=",
        "-",
        "+",
        "@",
        "-inf",
        "-1,5",
        "- 3",
        "-3.5 ",
        "-3.5\n=1+1",
        "-0x1A",
    ],
)
def test_cells_a_spreadsheet_would_run_get_a_leading_quote(cell):
    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["-3.5", "+1", "-0", "-.5", "-5.", "+1e3", "-2.5E-7", "3", "-12345678901234567890"])
def test_plain_numbers_stay_numbers(cell):
    assert neutralise(cell) == cell


@pytest.mark.parametrize("cell", ["", "abc", " =1+1", "a=b", "1-2", "'=1", "Yes", "6015-VVLBL", "Bank transfer"])
def test_other_text_is_left_as_it_is(cell):
    assert neutralise(cell) == cell


@pytest.mark.parametrize("cell", [None, 3, -3.5, float("nan"), True])
def test_values_that_are_not_text_are_left_as_they_are(cell):
    assert neutralise(cell) is cell


def test_a_frame_is_neutralised_cell_by_cell_and_numbers_columns_are_untouched():
    frame = pd.DataFrame(
        {
            "id": ["=1+1", "ok", "-3.5", "@x"],
            "amount": [-1.0, 2.0, -3.5, 4.0],
            "label": pd.Series(["-", None, "+1", "No"], dtype=object),
            "reject_reason": ["=cmd", "fine", "\tx", "-"],
        }
    )
    out = neutralise_frame(frame)
    assert list(out["id"]) == ["'=1+1", "ok", "-3.5", "'@x"]
    assert list(out["amount"]) == [-1.0, 2.0, -3.5, 4.0] and out["amount"].dtype == float
    assert list(out["label"]) == ["'-", None, "+1", "No"]
    assert list(out["reject_reason"]) == ["'=cmd", "fine", "'\tx", "'-"]
    assert frame["id"][0] == "=1+1"  # the input frame is not changed


def test_a_frame_with_nothing_to_neutralise_is_returned_as_it_is():
    frame = pd.DataFrame({"a": ["x", "y"], "b": [1, -2], "c": pd.Series([None, None], dtype=object)})
    assert neutralise_frame(frame) is frame


def test_the_frame_and_the_cell_function_agree():
    cells = ["=1", "-1", "-1-1", "+", "@", "\t", "\r\n", "a", "", "-.5e3", "--1", "+-1", "1", "'=1"]
    frame = pd.DataFrame({"c": cells})
    assert list(neutralise_frame(frame)["c"]) == [neutralise(c) for c in cells]
