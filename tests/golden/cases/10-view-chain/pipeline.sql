-- Two stateless views stacked, then an INSERT reading the second.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE
) WITH (
  'connector' = 'kafka',
  'topic' = 'g10-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g10-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

CREATE VIEW big AS
SELECT card_id, amount FROM tx WHERE amount > 100;

CREATE VIEW labelled AS
SELECT upper(card_id) AS card, amount * 0.5 AS half FROM big;

INSERT INTO out SELECT card, half FROM labelled WHERE half < 400;
