-- 'key.fields' sets each output record's Kafka key from a column.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g24-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE scored WITH (
  'connector' = 'kafka',
  'topic' = 'g24-scored',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'key.fields' = 'card_id'
);

CREATE TABLE per_card WITH (
  'connector' = 'kafka',
  'topic' = 'g24-per-card',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'key.fields' = 'card_id'
);

INSERT INTO scored SELECT card_id, amount * 2 AS doubled FROM tx;

INSERT INTO per_card
SELECT card_id, window_end, count(*) AS n
FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY card_id, window_start, window_end;
