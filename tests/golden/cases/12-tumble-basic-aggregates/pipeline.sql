-- TUMBLE(1 minute) per card with count(*), count(x), sum, avg, min, max and the window columns.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g12-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g12-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT
  card_id,
  window_start,
  window_end,
  window_time,
  count(*) AS n,
  count(amount) AS n_amount,
  sum(amount) AS total,
  avg(amount) AS mean,
  min(amount) AS lo,
  max(amount) AS hi
FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY card_id, window_start, window_end, window_time;
