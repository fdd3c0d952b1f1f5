"""Batch scoring's pieces without MLflow: the columnar compiled path, the batch scorer, tables in and out."""

import gzip
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams
from pipeline.core.data import prepare
from pipeline.core.errors import DataError
from pipeline.core.train import train
from pipeline.scoring import csv_reader, formula_cells, input_source, table_formats, table_reader, table_writer
from pipeline.scoring.batch_scorer import BatchScorer
from pipeline.scoring.compiled_columns import ColumnarModel, api_columns
from pipeline.scoring.formula_cells import TRIGGERS, neutralise

from ..api.conftest import make_model
from ..families import FAMILY_NAMES, quick_params

MODEL_TYPES = FAMILY_NAMES


@pytest.fixture(scope="module", params=MODEL_TYPES)
def model(request):
    data = prepare(generate_churn(600, 11).astype(str), DataParams())
    result = train(data, quick_params(request.param), test_size=0.25, seed=11)
    return make_model(result, max_batch_size=10_000), result


def text_batch(frame: pd.DataFrame) -> pa.RecordBatch:
    """A frame as the CSV reader hands it over: every cell text, blanks for missing."""
    return pa.RecordBatch.from_pandas(frame.astype(object).where(frame.notna(), "").astype(str), preserve_index=False)


def test_the_columnar_path_gives_the_loaded_models_answers(model):
    loaded, result = model
    frame = result.split.X_test.copy()
    frame.loc[frame.index[:7], "Contract"] = "Decade-long"  # a category never seen: all zeros
    frame.loc[frame.index[7:14], "PaymentMethod"] = " Mailed check "  # padded: the stripped category
    frame.loc[frame.index[14:20], "TotalCharges"] = np.nan  # missing number: imputed
    scorer = BatchScorer(loaded)
    assert scorer.columnar.compiled is not None and "compiled path on columns" in scorer.columnar.note
    checked = scorer.validator.check(text_batch(frame))
    assert checked.scored == len(frame)
    labels, positive = scorer.columnar.predict(checked.columns, checked.scored)
    expected = loaded.predict_columns(api_columns(checked.columns))  # the API's path
    assert [scorer.columnar.classes[i] for i in labels] == expected.labels
    assert np.allclose(positive, expected.probabilities, rtol=0, atol=1e-12)
    sklearn = result.model.predict_proba(loaded.frame(api_columns(checked.columns)))[:, loaded.positive_index]
    assert np.allclose(positive, sklearn, rtol=0, atol=1e-12)


def test_a_rows_probability_does_not_depend_on_the_batch_it_comes_in(model):
    loaded, result = model
    scorer = BatchScorer(loaded)
    batch = text_batch(result.split.X_test)
    whole = scorer.score(batch, 0).scored.column("probability").to_pylist()
    pieces = [
        scorer.score(batch.slice(i, 7), i).scored.column("probability").to_pylist() for i in range(0, len(batch), 7)
    ]
    assert whole == [p for piece in pieces for p in piece]  # bit for bit


def test_without_a_compiled_path_the_loaded_models_own_path_scores(model):
    loaded, result = model
    loaded.compiled = None
    try:
        scorer = BatchScorer(loaded)
        assert scorer.columnar.compiled is None and scorer.columnar.note.startswith("per value")
        checked = scorer.validator.check(text_batch(result.split.X_test))
        _, positive = scorer.columnar.predict(checked.columns, checked.scored)
        proba = result.model.predict_proba(loaded.frame(api_columns(checked.columns)))[:, loaded.positive_index]
        assert np.allclose(positive, proba, rtol=0, atol=1e-12)
    finally:
        loaded.compiled, _ = loaded._compile()


def test_numbers_beyond_float32_are_refused_as_the_api_refuses_them(model):
    loaded, result = model
    frame = result.split.X_test.head(6).copy().astype(object)
    frame.loc[frame.index[2], "tenure"] = "1e300"
    frame.loc[frame.index[4], "MonthlyCharges"] = "-3.5e38"
    batch = text_batch(frame)
    out = BatchScorer(loaded).score(batch, first_row=100)
    try:  # the API: a 422 naming the field when the model raises on such a number (a random forest: float32)
        loaded.predict_columns(api_columns(BatchScorer(loaded).validator.check(batch).columns))
    except ValueError:
        assert out.scored.num_rows == 4 and out.rejects.column("row").to_pylist() == [103, 105]
        reasons = out.rejects.column("reject_reason").to_pylist()
        assert reasons[0].startswith(
            "field 'tenure': 1e+300 is too large for this model (|x| must be at most 3.403e+38)"
        )
        assert reasons[1].startswith("field 'MonthlyCharges': -3.5e+38 is too large for this model")
    else:
        assert out.rejects is None and out.scored.num_rows == 6


def test_the_columnar_path_is_refused_when_it_disagrees_with_the_compiled_one(model, monkeypatch):
    loaded, _ = model
    if loaded.compiled is None or not loaded.compiled.linear:
        pytest.skip("the linear model is enough to show it")
    monkeypatch.setattr(
        ColumnarModel,
        "_matrix",
        staticmethod(lambda compiled, columns, tables, a, b: np.zeros((b - a, compiled.width))),
    )
    columnar = ColumnarModel(loaded)
    assert columnar.compiled is None and "differ from the compiled path's" in columnar.note


# ---- tables: readers and writers ----


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=8), st.sampled_from([*TRIGGERS, "-3.5", "+1e3", "-١٢", "=1", "-"]).flatmap(
    lambda t: st.text(max_size=5).map(lambda rest: t + rest))), min_size=1, max_size=30))  # fmt: skip
def test_neutralised_batches_are_neutralise_cell_by_cell(cells):
    batch = pa.RecordBatch.from_pydict({"a": cells, "n": list(range(len(cells)))})
    for column in (
        batch,
        pa.RecordBatch.from_arrays([batch.column(0).dictionary_encode(), batch.column(1)], ["a", "n"]),
    ):
        out = formula_cells.neutralised(column).column("a")
        got = out.dictionary_decode().to_pylist() if pa.types.is_dictionary(out.type) else out.to_pylist()
        assert got == [neutralise(c) for c in cells]


def test_a_sliced_and_a_large_string_column_are_neutralised_too():
    column = pa.array(["x", "=1", "-2", "@a", "ok"]).slice(1)
    assert formula_cells.neutralised(pa.RecordBatch.from_arrays([column], ["a"])).column("a").to_pylist() == [
        "'=1",
        "-2",
        "'@a",
        "ok",
    ]
    large = pa.array(["=1", "b"], type=pa.large_string())
    assert formula_cells.neutralised(pa.RecordBatch.from_arrays([large], ["a"])).column("a").to_pylist() == ["'=1", "b"]


def read_all(path: Path, batch_rows: int = 3, coded: tuple[str, ...] = ()) -> pa.Table:
    source = table_reader.open_source(path, batch_rows, coded)
    try:
        batches = list(source.batches)
    finally:
        source.close()
    assert all(b.num_rows <= batch_rows for b in batches)
    decoded = [table_writer._as_declared(b, source.schema) for b in batches]  # coded columns as the text they hold
    return pa.Table.from_batches(decoded, schema=source.schema)


def test_the_csv_reader_keeps_every_cell_as_the_text_it_is(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes('\ufeffa,b,,c\n"",NA,x,"l\nm"\n\n 1 ,nan,,"q""u"\n'.encode())
    table = read_all(path)
    assert table.column_names == ["a", "b", "Unnamed: 2", "c"]  # a BOM is not a name; a blank name as pandas names it
    assert table.to_pylist() == [
        {"a": "", "b": "NA", "Unnamed: 2": "x", "c": "l\nm"},
        {"a": " 1 ", "b": "nan", "Unnamed: 2": "", "c": 'q"u'},
    ]
    gz = tmp_path / "in.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert read_all(gz).to_pylist() == table.to_pylist()


def test_coded_csv_columns_arrive_dictionary_encoded_with_the_same_text(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b'a,b,c\n"",NA,x\n =1 ,,"l\nm"\n=1,NA,x\n')
    source = table_reader.open_source(path, 2, coded=["a", "c"])
    try:
        batches = list(source.batches)
    finally:
        source.close()
    assert source.schema == pa.schema([("a", pa.string()), ("b", pa.string()), ("c", pa.string())])
    assert [str(b.schema.field(n).type) for b in batches[:1] for n in "abc"] == [
        "dictionary<values=string, indices=int32, ordered=0>",
        "string",
        "dictionary<values=string, indices=int32, ordered=0>",
    ]
    assert (
        read_all(path, 2, coded=("a", "c")).to_pylist()
        == read_all(path, 2).to_pylist()
        == [
            {"a": "", "b": "NA", "c": "x"},
            {"a": " =1 ", "b": "", "c": "l\nm"},
            {"a": "=1", "b": "NA", "c": "x"},
        ]
    )


def test_the_reader_thread_hands_over_the_batches_read_before_an_error_then_the_error(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_reader, "BLOCK_BYTES", 64)
    path = tmp_path / "in.csv"
    path.write_text("a,b\n" + "".join(f"{i},x\n" for i in range(100)) + "1,2,3\n")
    source = table_reader.open_source(path, 1000)
    got = []
    with pytest.raises(DataError, match="a row \\('1,2,3'\\) has 3 fields where the header names 2"):
        for batch in source.batches:
            got.extend(batch.column("a").to_pylist())
    source.close()
    # The blocks read before the bad one, in order (pyarrow gives up on the block holding it), then the error.
    assert 50 < len(got) < 100 and got == [str(i) for i in range(len(got))]
    assert list(source.batches) == []  # and then nothing more


def test_closing_a_source_part_way_stops_its_reader_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_reader, "BLOCK_BYTES", 64)
    path = tmp_path / "in.csv"
    path.write_text("a\n" + "".join(f"{i}\n" for i in range(10_000)))
    source = table_reader.open_source(path, 10)
    first = next(source.batches)
    source.close()  # with the reader blocked on a full queue
    assert first.column("a").to_pylist()[:2] == ["0", "1"]
    assert not source.batches._thread.is_alive()
    assert list(source.batches) == []
    source.close()  # twice is harmless


def test_batches_waiting_stay_within_the_read_ahead_limit_and_in_order():
    produced = []

    def batches():
        for i in range(6):
            produced.append(i)
            yield pa.RecordBatch.from_pydict({"i": [i] * 1000})

    def until(condition):
        for _ in range(500):
            if condition():
                return
            time.sleep(0.01)
        raise AssertionError("the reader thread did not get there")

    reading = input_source.ReadAhead(batches(), limit=1)  # less than a batch: one waits, the next is held back
    until(lambda: len(produced) == 2)
    time.sleep(0.2)  # room for a third, were the limit not kept
    assert produced == [0, 1] and len(reading._waiting) == 1
    assert next(reading).column("i")[0].as_py() == 0
    reading.limit(1 << 30)
    until(lambda: len(produced) == 6)
    assert [b.column("i")[0].as_py() for b in reading] == [1, 2, 3, 4, 5]
    reading.close()


def test_the_columns_read_dictionary_encoded_are_those_whose_first_block_repeats_its_values(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,kind,n\n" + "".join(f"{i},{'ab'[i % 2]},{i % 3}\n" for i in range(40)))
    assert csv_reader.repetitive(path, ["id", "kind", "n"]) == ["kind", "n"]
    path.write_text("id,kind\n")
    assert csv_reader.repetitive(path, ["id", "kind"]) == []


@pytest.mark.parametrize("fmt", [table_formats.CSV, table_formats.PARQUET])
def test_a_sink_writes_coded_text_as_the_plain_text_its_schema_declares(tmp_path, fmt):
    schema = pa.schema([("a", pa.string()), ("n", pa.int64())])
    coded = pa.array(["=1", "x", "", "x"]).dictionary_encode()
    sink = table_writer.Sink(tmp_path / "o", tmp_path / "o", fmt, schema)
    sink.write(pa.RecordBatch.from_arrays([coded, pa.array([1, 2, 3, 4])], names=["a", "n"]))
    sink.write(pa.RecordBatch.from_arrays([pa.array(["y"]), pa.array([5])], names=["a", "n"]))
    sink.close()
    if fmt == table_formats.PARQUET:
        import pyarrow.parquet as pq

        table = pq.read_table(tmp_path / "o")
        assert table.schema == schema and table.column("a").to_pylist() == ["=1", "x", "", "x", "y"]
    else:
        assert (tmp_path / "o").read_text() == '"a","n"\n"\'=1",1\n"x",2\n"",3\n"x",4\n"y",5\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n3\n", "a row ('3') has 1 fields where the header names 2"),
        ("a,b\n1,2\n3,4,5\n", "a row ('3,4,5') has 3 fields where the header names 2"),
        (b"a,b\n1,\xff\n", "not a readable CSV: In CSV column #1: CSV conversion error to string: invalid UTF8 data"),
        ("a,a\n1,2\n", "column 'a' appears more than once in the header"),
        ("", "is empty: a CSV needs a header naming its columns"),
    ],
)
def test_the_csv_reader_refuses_what_it_cannot_read(tmp_path, monkeypatch, text, message):
    monkeypatch.setattr(csv_reader, "HEADER_BYTES", 5)  # the header is read from the first bytes, the rest by pyarrow
    path = tmp_path / "in.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError) as refused:
        read_all(path)
    assert message in str(refused.value)


def test_a_write_error_names_the_target_and_not_the_temp_file(tmp_path):
    schema = pa.schema([("a", pa.string())])
    sink = table_writer.Sink(Path("/dev/full"), tmp_path / "out.csv", table_formats.CSV, schema)
    sink.write(pa.RecordBatch.from_pydict({"a": ["x" * 100_000]}, schema=schema))
    with pytest.raises(OSError) as failed:
        sink.close()
    assert failed.value.errno == 28 and failed.value.filename == str(tmp_path / "out.csv")


def test_an_empty_output_still_has_its_header(tmp_path):
    schema = pa.schema([("a", pa.string()), ("p", pa.float64())])
    sink = table_writer.Sink(tmp_path / "o.csv", tmp_path / "o.csv", table_formats.CSV, schema)
    sink.close()
    assert (tmp_path / "o.csv").read_text() == '"a","p"\n'


def test_output_format_by_flag_or_suffix():
    assert table_formats.output_format(Path("p.parquet"), None) == "parquet"
    assert table_formats.output_format(Path("p.PQ"), None) == "parquet"
    assert table_formats.output_format(Path("p.csv"), None) == "csv"
    assert table_formats.output_format(Path("p.txt"), None) == "csv"
    assert table_formats.output_format(Path("p.txt"), "parquet") == "parquet"


def test_probabilities_in_csv_read_back_as_the_same_doubles():
    values = [0.1, 1 / 3, 2.0, 1e-05, 0.6076471101439677, 5e-324, 1 - 1e-16]
    out = io.BytesIO()
    pcsv.write_csv(pa.table({"p": values}), out)
    assert [float(x) for x in out.getvalue().decode().split()[1:]] == values
    assert all(math.isfinite(v) for v in values) and json.dumps(values)
