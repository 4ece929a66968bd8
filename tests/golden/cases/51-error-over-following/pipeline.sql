-- Plan-time error: an OVER frame that ends after the current row.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE,
  qty BIGINT,
  event_time TIMESTAMP(3),
  WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g51-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g51-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT
  card_id,
  amount,
  count(*) OVER (PARTITION BY card_id ORDER BY event_time ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS n_3,
  sum(amount) OVER (PARTITION BY card_id ORDER BY event_time ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) AS s
FROM tx;
