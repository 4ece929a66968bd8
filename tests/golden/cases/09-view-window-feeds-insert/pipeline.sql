-- A view holding a windowed aggregate, read by an INSERT that derives features from it.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g09-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g09-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

CREATE VIEW feats AS
SELECT card_id, window_start, window_end, count(*) AS n, sum(amount) AS total
FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY card_id, window_start, window_end;

INSERT INTO out
SELECT
  card_id,
  window_end,
  total / n AS mean,
  CASE WHEN n >= 3 THEN 'busy' ELSE 'quiet' END AS level
FROM feats
WHERE total > 10;
