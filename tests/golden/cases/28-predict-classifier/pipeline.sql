-- predict() with a 3-feature classifier: the positive-class probability per event.
CREATE TABLE tx (
  id TEXT,
  x DOUBLE,
  y2 DOUBLE,
  z DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g28-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g28-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

CREATE MODEL clf WITH ('path' = '../../../models/classifier3.onnx');

CREATE VIEW scored AS
SELECT id, predict(clf, x, y2 / 2, z) AS p
FROM tx
WHERE id <> 'skip';

INSERT INTO out
SELECT id, p, CASE WHEN p >= 0.5 THEN 'flag' ELSE 'pass' END AS decision
FROM scored;
