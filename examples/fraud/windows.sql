-- Fraud scoring per card and minute: HOP window features over live card
-- transactions, scored by a scikit-learn model (fraud.onnx, trained by
-- train.py on the same features). The per-transaction pipeline is
-- pipeline.sql.
--
--   cargo run --release -- run examples/fraud/windows.sql
--
-- runs on the embedded broker, with a generator feeding 'transactions'.
-- KAFKA_BROKERS=host:9092 runs the same file against a real cluster.

SET 'pipeline.name' = 'fraud-windows';
SET 'checkpoint.interval' = '10s';

CREATE TABLE transactions (
  card_id  TEXT,
  merchant TEXT,
  amount   DOUBLE,
  ts       TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'transactions',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS:-embedded}',
  'scan.startup.mode' = 'earliest-offset',
  'dead-letter.topic' = 'transactions-dlq',
  -- The topic is keyed by card: a cluster job keeps state by card without
  -- a repartition topic.
  'key.fields' = 'card_id',
  -- Only on the embedded broker: synthetic transactions, 2000 a second.
  'embedded.generator' = 'fraud',
  'embedded.generator.rate' = '2000'
);

CREATE TABLE card_scores WITH (
  'connector' = 'kafka',
  'topic' = 'card-scores',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS:-embedded}',
  'key.fields' = 'card_id'
);

CREATE MODEL fraud WITH ('path' = 'fraud.onnx');

CREATE VIEW card_features AS
SELECT card_id, window_start, window_end,
       count(*)                 AS n,
       avg(amount)              AS avg_amount,
       max(amount)              AS max_amount,
       stddev_pop(amount)       AS sd_amount,
       count(DISTINCT merchant) AS n_merchants
FROM TABLE(HOP(TABLE transactions, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '10' MINUTE))
GROUP BY card_id, window_start, window_end;

INSERT INTO card_scores
SELECT card_id, window_end, n, avg_amount, max_amount,
       predict(fraud, n, avg_amount, max_amount, sd_amount, n_merchants) AS p_fraud
FROM card_features;
