-- TUMBLE 1 min with 1 min allowed lateness and max(): a late row that leaves the maximum as it was re-emits nothing; one that raises it gives an update.
SET 'window.allowed-lateness' = '1 min';
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '0' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g79-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g79-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT card_id, window_start, window_end, max(amount) AS mx
FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY card_id, window_start, window_end;
