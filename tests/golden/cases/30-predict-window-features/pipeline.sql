-- Window features scored by two models: the feature-view-then-predict shape of a real pipeline.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g30-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g30-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'key.fields' = 'card_id'
);

CREATE MODEL clf WITH ('path' = '../../../models/classifier3.onnx');
CREATE MODEL reg WITH ('path' = '../../../models/regressor2.onnx');

CREATE VIEW features AS
SELECT card_id, window_start, window_end, count(*) AS n, avg(amount) AS mean, max(amount) AS hi
FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY card_id, window_start, window_end;

INSERT INTO out
SELECT card_id, window_end, n, mean, hi,
       predict(clf, n, mean, hi) AS p_fraud,
       predict(reg, mean, n) AS expected_spend
FROM features;
