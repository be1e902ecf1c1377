"""A small PyFlink job for the connector test: copy one topic to another, upper-casing values in Python."""

from __future__ import annotations

import sys

from streams.flink import kafka_sink, kafka_source, table_environment
from streamtune.settings import load_settings


def main(source: str, target: str, group_id: str) -> None:
    from pyflink.common import Row, Types

    settings = load_settings(config_files=[])
    _, t_env = table_environment(settings, checkpointing=False)
    t_env.create_temporary_table("src", kafka_source(source, settings, group_id=group_id, bounded=True))
    t_env.create_temporary_table("dst", kafka_sink(target, settings))
    rows = t_env.to_data_stream(t_env.sql_query("SELECT `key`, `value` FROM src"))
    upper = rows.map(
        lambda row: Row(key=row[0], value=bytes(row[1]).upper()),
        output_type=Types.ROW_NAMED(
            ["key", "value"], [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE())]
        ),
    )
    t_env.from_data_stream(upper).execute_insert("dst").wait()


if __name__ == "__main__":
    main(*sys.argv[1:4])
