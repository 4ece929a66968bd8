-- Plan-time error: a format weir does not have.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE
) WITH (
  'connector' = 'kafka',
  'topic' = 'g35-tx',
  'format' = 'xml',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g35-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out SELECT card_id, amount FROM tx;
