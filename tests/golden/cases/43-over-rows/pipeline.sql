-- ROWS frames: the current row and the 2 rows before it in (event time, arrival) order.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g43-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g43-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT
  card_id,
  amount,
  ts,
  count(*) OVER (PARTITION BY card_id ORDER BY ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS n_3,
  sum(amount) OVER (PARTITION BY card_id ORDER BY ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS sum_3,
  avg(amount) OVER (PARTITION BY card_id ORDER BY ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS avg_3,
  max(amount) OVER (PARTITION BY card_id ORDER BY ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS max_3
FROM tx;
