-- HOP(slide 30 s, size 1 min) per card: each row lands in two overlapping windows.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g14-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g14-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT
  card_id,
  window_start,
  window_end,
  count(*) AS n,
  count(amount) AS n_amount,
  sum(amount) AS total,
  avg(amount) AS mean,
  min(amount) AS lo,
  max(amount) AS hi
FROM TABLE(HOP(TABLE tx, DESCRIPTOR(ts), INTERVAL '30' SECOND, INTERVAL '1' MINUTE))
GROUP BY card_id, window_start, window_end;
