"""Batch scoring: a CSV or Parquet file (or a Spark dataset) scored by a released version, bad rows set aside.

The score stage (pipeline/stages/scoring.py) reads the settings, loads the
version and runs one engine through engine.ScoringEngine (check_paths, score).
Nothing here reads the environment or the registry.

- engines: local_engine.py (streamed through this process), spark_engine.py
  (on a cluster: spark_session.py, spark_partitions.py, spark_row_numbers.py,
  hadoop_files.py, spark_failures.py)
- one batch, either engine: batch_scorer.py = column_validator.py (column_values.py,
  then the API's RecordValidator for flagged rows) + compiled_columns.py
- tables in: table_reader.py (csv_reader.py, input_source.py, table_formats.py),
  held to byte_caps.py and, for Parquet, parquet_pages.py
- tables out: table_writer.py, with formula_cells.py for CSV
"""
