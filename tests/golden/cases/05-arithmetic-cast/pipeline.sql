-- Arithmetic on DOUBLE, BIGINT and INT columns, and CASTs between types.
CREATE TABLE tx (
  id TEXT,
  amount DOUBLE,
  qty BIGINT,
  n INT
) WITH (
  'connector' = 'kafka',
  'topic' = 'g05-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g05-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT
  id,
  amount * qty AS total,
  amount + 1.5 AS plus,
  qty - n AS diff,
  qty / 2 AS half,
  qty % 3 AS rem,
  CAST(amount AS BIGINT) AS amount_int,
  CAST(qty AS DOUBLE) / 4 AS quarter,
  CAST(n AS VARCHAR) AS n_str,
  -amount AS neg
FROM tx;
