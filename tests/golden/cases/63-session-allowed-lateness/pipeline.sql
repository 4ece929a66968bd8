-- SESSION per card (gap 30 s, no watermark delay) with 1 min allowed lateness: retractions and updates of fired sessions.
SET 'window.allowed-lateness' = '1 min';
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '0' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g63-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g63-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT card_id, window_start, window_end, count(*) AS n, sum(amount) AS total
FROM TABLE(SESSION(TABLE tx PARTITION BY card_id, DESCRIPTOR(ts), INTERVAL '30' SECOND))
GROUP BY card_id, window_start, window_end;
