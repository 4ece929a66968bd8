-- Plan-time error: a column type weir cannot read.
CREATE TABLE tx (
  card_id TEXT,
  location GEOGRAPHY,
  amount DOUBLE
) WITH (
  'connector' = 'kafka',
  'topic' = 'g41-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g41-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out SELECT card_id, amount FROM tx;
