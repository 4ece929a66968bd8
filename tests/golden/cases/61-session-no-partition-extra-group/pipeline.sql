-- Global SESSION windows (no PARTITION BY, gap 20 s), grouped by merchant within each session.
CREATE TABLE tx (
  card_id TEXT,
  merchant TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g61-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g61-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT
  merchant,
  window_start,
  window_end,
  count(*) AS n,
  sum(amount) AS total,
  count(DISTINCT card_id) AS cards
FROM TABLE(SESSION(TABLE tx, DESCRIPTOR(ts), INTERVAL '20' SECOND))
GROUP BY window_start, window_end, merchant;
