-- A fraud feature set: OVER aggregates over 1-minute, 10-minute and 1-hour frames in one SELECT, two of them named in a WINDOW clause.
CREATE TABLE tx (
  card_id TEXT,
  merchant TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g44-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g44-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT
  card_id,
  merchant,
  amount,
  ts,
  count(*) OVER (PARTITION BY card_id ORDER BY ts RANGE BETWEEN INTERVAL '1' MINUTE PRECEDING AND CURRENT ROW) AS n_1m,
  count(*) OVER w10m AS n_10m,
  sum(amount) OVER w10m AS sum_10m,
  count(DISTINCT merchant) OVER w10m AS merchants_10m,
  count(*) OVER w1h AS n_1h,
  avg(amount) OVER w1h AS avg_1h,
  max(amount) OVER w1h AS max_1h,
  amount / avg(amount) OVER w1h AS ratio_1h
FROM tx
WINDOW
  w10m AS (PARTITION BY card_id ORDER BY ts RANGE BETWEEN INTERVAL '10' MINUTE PRECEDING AND CURRENT ROW),
  w1h AS (PARTITION BY card_id ORDER BY ts RANGE BETWEEN INTERVAL '1' HOUR PRECEDING AND CURRENT ROW);
