-- Plan-time error: a window function that is not an aggregate.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE,
  qty BIGINT,
  event_time TIMESTAMP(3),
  WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g53-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g53-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT
  card_id,
  amount,
  row_number() OVER (PARTITION BY card_id ORDER BY event_time ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS rn
FROM tx;
