-- Every supported column type, read from JSON and written back unchanged.
SET 'pipeline.name' = 'golden-column-types';

CREATE TABLE tx (
  s TEXT,
  v VARCHAR,
  d DOUBLE,
  b BIGINT,
  i INT,
  ok BOOLEAN,
  f FLOAT,
  ts TIMESTAMP(3)
) WITH (
  'connector' = 'kafka',
  'topic' = 'g01-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g01-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out SELECT s, v, d, b, i, ok, f, ts FROM tx;
