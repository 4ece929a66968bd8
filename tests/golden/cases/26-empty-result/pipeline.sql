-- A filter that drops every row: the run still ends and the sink receives nothing.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE
) WITH (
  'connector' = 'kafka',
  'topic' = 'g26-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g26-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out SELECT card_id, amount FROM tx WHERE amount > 1000000;
