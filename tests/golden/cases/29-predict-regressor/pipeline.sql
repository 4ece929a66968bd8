-- predict() with a 2-feature regressor, one feature from a BIGINT column.
CREATE TABLE tx (
  id TEXT,
  x DOUBLE,
  n BIGINT
) WITH (
  'connector' = 'kafka',
  'topic' = 'g29-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g29-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

CREATE MODEL reg WITH ('path' = '../../../models/regressor2.onnx');

INSERT INTO out
SELECT id, x, n, predict(reg, x, n) AS y_hat
FROM tx;
