-- SESSION windows per card (gap 30 s, watermark delay 5 s, no allowed lateness): merging, ties, late rows.
CREATE TABLE tx (
  card_id TEXT,
  merchant TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g60-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g60-out',
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
  sum(amount) AS total,
  min(amount) AS lo,
  max(amount) AS hi,
  count(DISTINCT merchant) AS merchants
FROM TABLE(SESSION(TABLE tx PARTITION BY card_id, DESCRIPTOR(ts), INTERVAL '30' SECOND))
GROUP BY card_id, window_start, window_end, window_time;
