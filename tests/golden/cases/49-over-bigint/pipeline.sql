-- OVER aggregates over a BIGINT column keep integer results.
CREATE TABLE tx (
  card_id TEXT,
  qty BIGINT,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g49-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g49-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT
  card_id,
  qty,
  ts,
  count(qty) OVER (PARTITION BY card_id ORDER BY ts ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS n_qty,
  sum(qty) OVER (PARTITION BY card_id ORDER BY ts ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS sum_qty,
  min(qty) OVER (PARTITION BY card_id ORDER BY ts ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS min_qty,
  max(qty) OVER (PARTITION BY card_id ORDER BY ts ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS max_qty
FROM tx;
