"""The feature store's data built from the churn frame (pure: no Feast)."""

from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.churn_data import generate_churn
from pipeline.core.errors import DataError
from pipeline.core.feature_data import (
    ACCOUNT,
    CREATED,
    ENTITY,
    EVENT_TIMESTAMP,
    HISTORY_GAP,
    PROFILE,
    VIEWS,
    default_times,
    earlier_values,
    entity_frame,
    feature_frames,
    write_feature_data,
)

SNAPSHOT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
OBSERVED = SNAPSHOT + timedelta(days=1)


@pytest.fixture(scope="module")
def churn(tmp_path_factory) -> pd.DataFrame:
    """The churn data as the CSV path reads it: every column text."""
    path = tmp_path_factory.mktemp("csv") / "churn.csv"
    generate_churn(200, 3).to_csv(path, index=False)
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])


def test_views_split_the_nineteen_features_between_them():
    assert set(PROFILE).isdisjoint(ACCOUNT)
    assert set(PROFILE) | set(ACCOUNT) == set(generate_churn(5, 1).columns) - {ENTITY, "Churn"}


def test_each_view_holds_every_customer_at_the_snapshot_typed_as_the_csv_path(churn):
    frames = feature_frames(churn, SNAPSHOT)
    assert set(frames) == set(VIEWS)
    for view, frame in frames.items():
        assert list(frame.columns) == [ENTITY, EVENT_TIMESTAMP, CREATED, *VIEWS[view]]
        assert frame[ENTITY].tolist() == churn[ENTITY].tolist()
        assert (frame[EVENT_TIMESTAMP] == pd.Timestamp(SNAPSHOT)).all()
        assert (frame[CREATED] == frame[EVENT_TIMESTAMP]).all()
    account = frames["customer_account"]
    assert account["tenure"].dtype == "int64" and account["MonthlyCharges"].dtype == "float64"
    assert frames["customer_profile"]["SeniorCitizen"].dtype == "int64"
    assert account["tenure"].tolist() == churn["tenure"].astype(int).tolist()
    assert account["MonthlyCharges"].tolist() == churn["MonthlyCharges"].astype(float).tolist()
    # TotalCharges stays text, blanks of brand-new customers included
    assert account["TotalCharges"].tolist() == churn["TotalCharges"].tolist()
    assert (account.loc[account["tenure"] == 0, "TotalCharges"] == " ").all()


def test_the_entity_frame_carries_the_label_observed_later(churn):
    entities = entity_frame(churn, OBSERVED)
    assert list(entities.columns) == [ENTITY, EVENT_TIMESTAMP, "Churn"]
    assert entities["Churn"].tolist() == churn["Churn"].tolist()
    assert (entities[EVENT_TIMESTAMP] == pd.Timestamp(OBSERVED)).all()


def test_earlier_values_differ_and_stay_valid(churn):
    older = earlier_values(churn)
    tenure, before = churn["tenure"].astype(int), older["tenure"].astype(int)
    assert (before == (tenure - 1).clip(lower=0)).all()
    assert (older["Partner"] != churn["Partner"]).all()
    assert (older["MonthlyCharges"].astype(float) != churn["MonthlyCharges"].astype(float)).mean() > 0.9
    assert ((before == 0) == (older["TotalCharges"] == " ")).all()
    assert older["MonthlyCharges"].astype(float).between(18.25, 118.75).all()


def test_written_files_have_plain_types_and_the_history_before_the_snapshot(churn, tmp_path):
    written = write_feature_data(tmp_path, churn, SNAPSHOT, OBSERVED, history=True)
    assert written.first == SNAPSHOT - HISTORY_GAP and written.last == SNAPSHOT and written.observed == OBSERVED
    account = pq.read_table(written.files["customer_account"])
    assert account.schema.field("tenure").type == pa.int64()
    assert account.schema.field("MonthlyCharges").type == pa.float64()
    assert account.schema.field("TotalCharges").type == pa.string()
    assert account.schema.field(EVENT_TIMESTAMP).type == pa.timestamp("us", tz="UTC")
    frame = account.to_pandas()
    assert len(frame) == 2 * len(churn) == written.rows["customer_account"]
    stamps = sorted(frame[EVENT_TIMESTAMP].unique())
    assert stamps == [pd.Timestamp(SNAPSHOT - HISTORY_GAP), pd.Timestamp(SNAPSHOT)]
    current = frame[frame[EVENT_TIMESTAMP] == pd.Timestamp(SNAPSHOT)]
    assert current["tenure"].tolist() == churn["tenure"].astype(int).tolist()
    entities = pd.read_parquet(written.files["entities"])
    assert len(entities) == len(churn) and entities["Churn"].tolist() == churn["Churn"].tolist()
    without = write_feature_data(tmp_path / "plain", churn, SNAPSHOT)
    assert without.rows["customer_profile"] == len(churn) and without.observed == SNAPSHOT


def test_bad_input_is_refused(churn, tmp_path):
    with pytest.raises(DataError, match="precede"):
        write_feature_data(tmp_path, churn, SNAPSHOT, SNAPSHOT - timedelta(seconds=1))
    twice = pd.concat([churn, churn.iloc[:1]], ignore_index=True)
    with pytest.raises(DataError, match="1 duplicate customerID"):
        feature_frames(twice, SNAPSHOT)
    with pytest.raises(DataError, match="lacks tenure"):
        feature_frames(churn.drop(columns="tenure"), SNAPSHOT)
    with pytest.raises(DataError, match="not a number"):
        feature_frames(churn.assign(tenure="x"), SNAPSHOT)
    with pytest.raises(ValueError, match="no time zone"):
        feature_frames(churn, SNAPSHOT.replace(tzinfo=None))


def test_default_times_put_the_snapshot_a_day_before_the_labels():
    now = datetime(2026, 12, 6, 10, 30, 15, 999, tzinfo=UTC)
    snapshot, observed = default_times(now)
    assert observed == now.replace(microsecond=0) and snapshot == observed - timedelta(days=1)
