-- Two INSERTs reading one source form one job: a per-event filter and a per-minute total.
SET 'pipeline.name' = 'golden-two-inserts';

CREATE TABLE tx (
  card_id TEXT,
  merchant TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g11-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE alerts WITH (
  'connector' = 'kafka',
  'topic' = 'g11-alerts',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

CREATE TABLE per_minute WITH (
  'connector' = 'kafka',
  'topic' = 'g11-per-minute',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO alerts
SELECT card_id, merchant, amount, ts FROM tx WHERE amount >= 1000;

INSERT INTO per_minute
SELECT window_start, window_end, count(*) AS n, sum(amount) AS total
FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY window_start, window_end;
