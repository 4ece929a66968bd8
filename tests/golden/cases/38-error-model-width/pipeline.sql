-- Plan-time error: a 3-feature model called with 2 features.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE,
  qty BIGINT,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g38-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g38-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

CREATE MODEL clf WITH ('path' = '../../../models/classifier3.onnx');

INSERT INTO out
SELECT card_id, predict(clf, amount, qty) AS p
FROM tx;
