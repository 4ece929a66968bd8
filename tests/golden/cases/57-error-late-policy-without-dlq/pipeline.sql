-- 'late.policy' = 'dead-letter' needs somewhere to put the rows.
CREATE TABLE tx (
  card_id TEXT,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g57-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'late.policy' = 'dead-letter'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g57-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out SELECT card_id, ts FROM tx;
