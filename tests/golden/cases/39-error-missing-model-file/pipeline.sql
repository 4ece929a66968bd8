-- Plan-time error: a model file that does not exist.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE,
  qty BIGINT,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g39-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g39-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

CREATE MODEL clf WITH ('path' = 'no-such-model.onnx');

INSERT INTO out
SELECT card_id, predict(clf, amount, qty, 1.0) AS p
FROM tx;
