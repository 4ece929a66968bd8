-- Plan-time error: a misspelled connector option.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE
) WITH (
  'connector' = 'kafka',
  'topic' = 'g34-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mod' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g34-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out SELECT card_id, amount FROM tx;
