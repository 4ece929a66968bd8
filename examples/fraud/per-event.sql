-- Fraud scoring per transaction: each transaction is scored when the watermark
-- reaches it, on its card's activity over the 10 minutes up to and including
-- it (OVER ... RANGE), with the same model as pipeline.sql, whose window
-- features describe the same 10 minutes of a card's activity.
--
--   cargo run --release -- run examples/fraud/per-event.sql
--
-- runs on the embedded broker, with a generator feeding 'transactions'.
-- KAFKA_BROKERS=host:9092 runs the same file against a real cluster.

SET 'pipeline.name' = 'fraud-per-event';
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
  -- Only on the embedded broker: synthetic transactions, 2000 a second.
  'embedded.generator' = 'fraud',
  'embedded.generator.rate' = '2000'
);

CREATE TABLE transaction_scores WITH (
  'connector' = 'kafka',
  'topic' = 'transaction-scores',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS:-embedded}',
  'key.fields' = 'card_id'
);

CREATE MODEL fraud WITH ('path' = 'fraud.onnx');

CREATE VIEW transaction_features AS
SELECT card_id, merchant, amount, ts,
       count(*)                 OVER last_10m AS n,
       avg(amount)              OVER last_10m AS avg_amount,
       max(amount)              OVER last_10m AS max_amount,
       stddev_pop(amount)       OVER last_10m AS sd_amount,
       count(DISTINCT merchant) OVER last_10m AS n_merchants
FROM transactions
WINDOW last_10m AS (PARTITION BY card_id ORDER BY ts
                    RANGE BETWEEN INTERVAL '10' MINUTE PRECEDING AND CURRENT ROW);

INSERT INTO transaction_scores
SELECT card_id, merchant, amount, ts, n,
       predict(fraud, n, avg_amount, max_amount, sd_amount, n_merchants) AS p_fraud
FROM transaction_features;
