"""Tests of engine.io: opening inputs, column checks, streaming, fingerprints, structural errors."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from engine.errors import SchemaError
from engine.io import InputFingerprint, TableSource, dtype_matches, open_table


def _table(n: int = 100, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "request_id": [f"r{i:05d}" for i in range(n)],
            "score": rng.random(n),
            "label": rng.integers(0, 2, n),
            "country": rng.choice(["US", "BR", "DE"], n),
            "ts": pa.array(np.arange(n) * 1_000_000, pa.timestamp("us", tz="UTC")),
        }
    )


@pytest.fixture
def pq_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "online.parquet"
    pq.write_table(_table(), path, row_group_size=30)
    return path


# ------------------------------------------------------------------------------ opening


def test_parquet_file(pq_file: pathlib.Path) -> None:
    src = open_table(pq_file, "online")
    assert isinstance(src, TableSource)
    assert src.role == "online" and src.path == str(pq_file) and src.format == "parquet"
    assert src.schema.names == ["request_id", "score", "label", "country", "ts"]
    assert isinstance(src.dataset, ds.Dataset)
    assert src.count_rows() == 100
    assert src.files == [str(pq_file)]


def test_hive_directory(tmp_path: pathlib.Path) -> None:
    t = _table(200)
    pq.write_to_dataset(t, tmp_path / "d", partition_cols=["country"])
    (tmp_path / "d" / "_SUCCESS").write_bytes(b"")  # Spark's marker: ignored
    src = open_table(tmp_path / "d", "online")
    assert "country" in src.schema.names
    assert src.count_rows() == 200
    assert len(src.files) == 3
    got = pa.Table.from_batches(list(src.batches(["request_id", "country"])))
    exp = t.select(["request_id", "country"]).to_pandas()
    assert sorted(map(tuple, got.to_pandas().to_numpy().tolist())) == sorted(
        map(tuple, exp.to_numpy().tolist())
    )


def test_csv_file_and_directory(tmp_path: pathlib.Path) -> None:
    df = pd.DataFrame(
        {"request_id": ["a", None, "c"], "score": [0.1, None, 0.3], "n": [1, 2, None]}
    )
    df.to_csv(tmp_path / "x.csv", index=False)
    src = open_table(tmp_path / "x.csv", "offline")
    assert src.format == "csv" and src.count_rows() == 3
    got = pa.Table.from_batches(list(src.batches()))
    # Blank fields are nulls, in string columns too.
    assert got.column("request_id").to_pylist() == ["a", None, "c"]
    assert got.column("score").null_count == 1 and got.column("n").null_count == 1

    (tmp_path / "dir").mkdir()
    df.to_csv(tmp_path / "dir" / "a.csv", index=False)
    df.to_csv(tmp_path / "dir" / "b.csv", index=False)
    assert open_table(tmp_path / "dir", "offline").count_rows() == 6

    # An unusual extension with an explicit format.
    df.to_csv(tmp_path / "x.dat", index=False)
    assert open_table(tmp_path / "x.dat", "offline", format="csv").count_rows() == 3


def test_parquet_without_extension_is_sniffed(tmp_path: pathlib.Path) -> None:
    pq.write_table(_table(10), tmp_path / "part-00000")
    assert open_table(tmp_path / "part-00000", "online").format == "parquet"


def test_in_memory_inputs() -> None:
    t = _table(50)
    a = open_table(t, "online")
    assert a.path == "<memory>" and a.format == "memory" and a.count_rows() == 50
    df = t.to_pandas()
    b = open_table(df, "online")
    assert b.schema.names == t.schema.names and b.count_rows() == 50
    with pytest.raises(SchemaError, match="online DataFrame"):
        open_table(pd.DataFrame({"x": [1, "a", 2.5]}), "online")
    with pytest.raises(SchemaError, match="must be a path"):
        open_table(42, "online")  # type: ignore[arg-type]


def test_batches_project_and_stream(pq_file: pathlib.Path) -> None:
    src = open_table(pq_file, "online")
    batches = list(src.batches(["score", "request_id"], batch_size=16))
    assert all(b.num_rows <= 16 for b in batches)
    assert all(b.schema.names == ["score", "request_id"] for b in batches)
    assert sum(b.num_rows for b in batches) == 100
    filtered = list(src.batches(["label"], filter=ds.field("label") == 1))
    assert sum(b.num_rows for b in filtered) == pc_sum(_table().column("label"))
    with pytest.raises(SchemaError, match="'nope'"):
        list(src.batches(["nope"]))


def pc_sum(arr: pa.ChunkedArray) -> int:
    return int(np.asarray(arr).sum())


# ------------------------------------------------------------------------------ require


def test_require_kinds() -> None:
    t = pa.table(
        {
            "i": pa.array([1], pa.int32()),
            "f": [0.5],
            "b": [True],
            "s": ["x"],
            "cat": pa.array(["x"]).dictionary_encode(),
            "ts": pa.array([1], pa.timestamp("ns")),
            "d": pa.array([1], pa.date32()),
            "n": pa.nulls(1),
        }
    )
    src = open_table(t, "online")
    assert src.require("i", "numeric") == pa.int32()
    assert src.require("b", "integer_or_bool") == pa.bool_()
    assert src.require("cat", "string_like").value_type == pa.string()
    assert src.require("ts", "timestamp") == pa.timestamp("ns")
    assert src.require("d", "timestamp") == pa.date32()
    assert src.require("s", "key") == pa.string()
    assert src.require("n", "numeric") == pa.null()  # no values: counted later, not an error
    assert src.require("b", ("numeric", "integer_or_bool")) == pa.bool_()
    for col, kind in [
        ("s", "numeric"),
        ("f", "integer_or_bool"),
        ("i", "string_like"),
        ("b", "key"),
        ("s", "timestamp"),
        ("b", "numeric"),
    ]:
        with pytest.raises(SchemaError):
            src.require(col, kind)
    assert dtype_matches(pa.float32(), "any")
    with pytest.raises(ValueError, match="unknown column kind"):
        dtype_matches(pa.float32(), "float")


def test_require_missing_column_message(pq_file: pathlib.Path) -> None:
    src = open_table(pq_file, "online")
    with pytest.raises(SchemaError) as e:
        src.require("scroe", "numeric")
    msg = str(e.value)
    assert str(pq_file) in msg and "'scroe'" in msg and "online" in msg
    assert "Did you mean 'score'?" in msg
    for name in ["request_id", "label", "country", "ts"]:
        assert f"'{name}'" in msg
    with pytest.raises(SchemaError) as e:
        src.require("zzzzzz", "any")
    assert "Did you mean" not in str(e.value)


def test_require_wrong_type_message(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "offline.parquet"
    pq.write_table(pa.table({"request_id": [1, 2], "score": ["0.1", "0.2"]}), path)
    with pytest.raises(SchemaError) as e:
        open_table(path, "offline").require("score", "numeric")
    msg = str(e.value)
    assert str(path) in msg and "'score'" in msg and "string" in msg and "numeric" in msg


# ------------------------------------------------------------------------------ errors


def test_missing_path(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SchemaError) as e:
        open_table(tmp_path / "nope.parquet", "outcomes")
    assert "outcomes" in str(e.value) and "nope.parquet" in str(e.value)
    assert "does not exist" in str(e.value)


def test_corrupt_parquet_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(os.urandom(256))
    with pytest.raises(SchemaError) as e:
        open_table(path, "online")
    assert str(path) in str(e.value) and "Parquet" in str(e.value)
    # Right magic, wrong inside.
    path.write_bytes(b"PAR1" + os.urandom(64) + b"\x10\x00\x00\x00PAR1")
    with pytest.raises(SchemaError, match="bad.parquet"):
        open_table(path, "online")


def test_corrupt_file_in_directory_is_named(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    pq.write_table(_table(10), d / "a.parquet")
    (d / "b.parquet").write_bytes(b"garbage, not parquet at all")
    with pytest.raises(SchemaError) as e:
        open_table(d, "offline")
    assert "b.parquet" in str(e.value) and "offline" in str(e.value)


def test_empty_directory_and_unknown_format(tmp_path: pathlib.Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_SUCCESS").write_bytes(b"")
    with pytest.raises(SchemaError, match="no data file"):
        open_table(tmp_path / "empty", "online")
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(SchemaError, match="format .* unknown"):
        open_table(tmp_path / "x.json", "online")
    with pytest.raises(SchemaError, match="Unknown format 'orc'"):
        open_table(tmp_path / "x.json", "online", format="orc")


# Empty inputs: parity's own message, naming the table and the file, never Arrow's.
def _empty_message(tmp_path: pathlib.Path, make) -> tuple[str, str]:
    """(the message of opening what ``make`` wrote, the path given)."""
    given = make(tmp_path)
    with pytest.raises(SchemaError) as e:
        open_table(given, "outcomes")
    msg = str(e.value)
    assert "outcomes table" in msg and str(given) in msg, msg
    assert "Empty CSV file or block" not in msg and "Could not open" not in msg, msg
    return msg, str(given)


def test_zero_byte_csv(tmp_path: pathlib.Path) -> None:
    def make(d):
        (d / "o.csv").write_bytes(b"")
        return d / "o.csv"

    msg, _ = _empty_message(tmp_path, make)
    assert "is empty (0 bytes)" in msg and "header line" in msg


def test_zero_byte_compressed_csv(tmp_path: pathlib.Path) -> None:
    import gzip

    def make(d):
        (d / "o.csv.gz").write_bytes(gzip.compress(b""))  # not 0 bytes, yet no header
        return d / "o.csv.gz"

    msg, _ = _empty_message(tmp_path, make)
    assert "is empty" in msg and "no header line" in msg


def test_csv_with_a_header_and_no_rows(tmp_path: pathlib.Path) -> None:
    def make(d):
        (d / "o.csv").write_text("request_id,label\n")
        return d / "o.csv"

    msg, _ = _empty_message(tmp_path, make)
    assert "header line ('request_id', 'label') but no rows" in msg


def test_csv_whose_first_file_is_all_empty_fields_still_opens(tmp_path: pathlib.Path) -> None:
    # all-null columns are not an empty table: rows are there (their values count as invalid)
    (tmp_path / "o.csv").write_text("request_id,label\n,\n,\n")
    assert open_table(tmp_path / "o.csv", "outcomes").count_rows() == 2


def test_zero_byte_csv_in_a_directory_is_named(tmp_path: pathlib.Path) -> None:
    def make(d):
        (d / "t").mkdir()
        (d / "t" / "a.csv").write_text("request_id,label\nr1,1\n")
        (d / "t" / "b.csv").write_bytes(b"")
        return d / "t"

    msg, _ = _empty_message(tmp_path, make)
    assert "b.csv" in msg and "is empty (0 bytes)" in msg


def test_zero_byte_parquet_file(tmp_path: pathlib.Path) -> None:
    def make(d):
        (d / "o.parquet").write_bytes(b"")
        return d / "o.parquet"

    msg, _ = _empty_message(tmp_path, make)
    assert "is empty (0 bytes)" in msg and "Parquet" in msg


def test_parquet_directory_of_empty_files_is_named(tmp_path: pathlib.Path) -> None:
    def make(d):
        (d / "t" / "day=1").mkdir(parents=True)
        (d / "t" / "day=1" / "part-0.parquet").write_bytes(b"")
        (d / "t" / "_SUCCESS").write_bytes(b"")
        return d / "t"

    msg, _ = _empty_message(tmp_path, make)
    assert "part-0.parquet" in msg and "is empty (0 bytes)" in msg


def test_empty_directories(tmp_path: pathlib.Path) -> None:
    def make(d):
        (d / "t" / "day=1").mkdir(parents=True)  # folders, no file
        return d / "t"

    msg, _ = _empty_message(tmp_path, make)
    assert "no data file" in msg


def test_parquet_with_a_schema_and_no_rows_opens(tmp_path: pathlib.Path) -> None:
    # Readable and typed: whether zero rows is acceptable is the run's decision, not io's.
    pq.write_table(_table(0), tmp_path / "o.parquet")
    src = open_table(tmp_path / "o.parquet", "outcomes")
    assert src.count_rows() == 0 and src.schema.field("score").type == pa.float64()


# ------------------------------------------------------------------------------ fingerprints


def test_fingerprint_parquet(tmp_path: pathlib.Path, pq_file: pathlib.Path) -> None:
    fp = open_table(pq_file, "online").fingerprint()
    assert isinstance(fp, InputFingerprint)
    assert fp.rows == 100 and fp.size_bytes == pq_file.stat().st_size
    assert len(fp.schema_hash) == 16 and int(fp.schema_hash, 16) >= 0
    d = fp.to_dict()
    assert set(d) == {"role", "path", "rows", "fingerprint", "size_bytes", "schema_hash"}
    assert {"role", "path", "rows", "fingerprint"} <= set(d) and d["role"] == "online"
    assert len(d["fingerprint"]) == 64
    # Stable: reopening gives the same fingerprint.
    assert open_table(pq_file, "online").fingerprint() == fp
    # Same schema, other values: same schema hash, other content hash.
    other = tmp_path / "other.parquet"
    pq.write_table(_table(seed=1), other, row_group_size=30)
    fp2 = open_table(other, "online").fingerprint()
    assert fp2.schema_hash == fp.schema_hash and fp2.content_hash != fp.content_hash
    # Other schema: other schema hash.
    pq.write_table(_table().drop_columns(["ts"]), other)
    assert open_table(other, "online").fingerprint().schema_hash != fp.schema_hash


def test_fingerprint_directory_includes_partition_paths(tmp_path: pathlib.Path) -> None:
    t = _table(60)
    pq.write_to_dataset(t, tmp_path / "a", partition_cols=["country"])
    fa = open_table(tmp_path / "a", "online").fingerprint()
    assert fa.rows == 60
    assert fa.size_bytes == sum(
        os.path.getsize(f) for f in open_table(tmp_path / "a", "online").files
    )
    # Rename one partition folder: same file bytes, other data.
    (tmp_path / "a" / "country=US").rename(tmp_path / "a" / "country=FR")
    assert open_table(tmp_path / "a", "online").fingerprint().content_hash != fa.content_hash


def test_fingerprint_csv_and_memory(tmp_path: pathlib.Path) -> None:
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    df.to_csv(tmp_path / "x.csv", index=False)
    f1 = open_table(tmp_path / "x.csv", "evaluation").fingerprint()
    df.assign(a=[1, 2, 4]).to_csv(tmp_path / "x.csv", index=False)
    f2 = open_table(tmp_path / "x.csv", "evaluation").fingerprint()
    assert f1.schema_hash == f2.schema_hash and f1.content_hash != f2.content_hash
    assert f1.size_bytes > 0 and f1.rows == 3

    t = _table(30)
    m1 = open_table(t, "online").fingerprint()
    m2 = open_table(pa.Table.from_batches(t.to_batches(max_chunksize=7)), "online").fingerprint()
    assert m1.path == "<memory>" and m1.rows == 30 and m1.size_bytes > 0
    assert m1 == m2  # chunking is not content
    m3 = open_table(_table(30, seed=5), "online").fingerprint()
    assert m3.content_hash != m1.content_hash
