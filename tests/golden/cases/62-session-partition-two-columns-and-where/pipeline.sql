-- SESSION per (card, merchant), gap 30 s, after WHERE amount > 0: filtered rows join no session but move the watermark.
CREATE TABLE tx (
  card_id TEXT,
  merchant TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g62-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g62-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT
  card_id,
  merchant,
  window_start,
  window_end,
  count(*) AS n,
  sum(amount) AS total,
  avg(amount) AS mean
FROM TABLE(SESSION(TABLE tx PARTITION BY card_id, merchant, DESCRIPTOR(ts), INTERVAL '30' SECOND))
WHERE amount > 0
GROUP BY card_id, merchant, window_start, window_end;
