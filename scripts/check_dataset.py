#!/usr/bin/env python3
"""Read a sluice Parquet dataset with pyarrow and DuckDB, as a user would.

Usage: check_dataset.py DATASET_DIR EXPECTED_ROWS [--vector COLUMN:WIDTH]

Checks that both readers see the Hive-partitioned dataset (the `date` partition column
included), that the row count matches, that `_timestamp` is a UTC timestamp, that no
temp or bookkeeping file is read, and that no row appears twice. With --vector, COLUMN
must be a fixed-size list of WIDTH floats in pyarrow and WIDTH floats per row in DuckDB. Exits
non-zero with a message on the first mismatch.
"""
import os
import sys

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds


def fail(message: str) -> None:
    print(f"check_dataset: {message}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    root, expected = sys.argv[1], int(sys.argv[2])
    vector = None
    if len(sys.argv) == 5 and sys.argv[3] == "--vector":
        name, width = sys.argv[4].split(":")
        vector = (name, int(width))

    dataset = ds.dataset(root, format="parquet", partitioning="hive")
    table = dataset.to_table()
    if table.num_rows != expected:
        fail(f"pyarrow read {table.num_rows} rows, expected {expected}")
    if "date" not in table.schema.names:
        fail(f"no `date` partition column in {table.schema.names}")
    ts_type = table.schema.field("_timestamp").type
    if not (pa.types.is_timestamp(ts_type) and ts_type.tz in ("UTC", "+00:00")):
        fail(f"_timestamp is {ts_type}, expected a UTC timestamp")
    relative = [os.path.relpath(f, root) for f in dataset.files]
    if any(part.startswith((".", "_")) for f in relative for part in f.split(os.sep)):
        fail(f"pyarrow read hidden files: {dataset.files}")
    keys = table.select(["_topic", "_partition", "_offset"]).to_pylist()
    if len({(k["_topic"], k["_partition"], k["_offset"]) for k in keys}) != expected:
        fail("a (topic, partition, offset) appears twice")

    glob = f"{root}/**/*.parquet"
    count, max_ts_type = duckdb.sql(
        f"SELECT count(*), any_value(typeof(_timestamp)) "
        f"FROM read_parquet('{glob}', hive_partitioning = true)"
    ).fetchall()[0]
    if count != expected:
        fail(f"DuckDB read {count} rows, expected {expected}")
    if max_ts_type != "TIMESTAMP WITH TIME ZONE":
        fail(f"DuckDB sees _timestamp as {max_ts_type}")
    dates = duckdb.sql(
        f"SELECT count(DISTINCT date) FROM read_parquet('{glob}', hive_partitioning = true)"
    ).fetchall()[0][0]

    if vector:
        name, width = vector
        field = table.schema.field(name).type
        if not (pa.types.is_fixed_size_list(field) and field.list_size == width and pa.types.is_float32(field.value_type)):
            fail(f"{name} is {field}, expected a fixed-size list of {width} float32")
        # Parquet has no fixed-size list type: DuckDB reads the column as a FLOAT list;
        # every row must still hold exactly WIDTH values.
        duck_type, shortest, longest = duckdb.sql(
            f"SELECT any_value(typeof({name})), min(len({name})), max(len({name})) "
            f"FROM read_parquet('{glob}', hive_partitioning = true)"
        ).fetchall()[0]
        if duck_type not in ("FLOAT[]", f"FLOAT[{width}]") or (shortest, longest) != (width, width):
            fail(f"DuckDB sees {name} as {duck_type} with {shortest}..{longest} values, expected {width} floats")

    print(f"check_dataset: ok: {expected} rows, {len(dataset.files)} files, {dates} date partitions, _timestamp {ts_type}")


if __name__ == "__main__":
    main()
