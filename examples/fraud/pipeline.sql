-- Fraud scoring per transaction: every card transaction is scored as soon as
-- the watermark reaches it, on its card's activity over the last minute, ten
-- minutes and hour up to and including it (OVER ... RANGE), and on the risk of
-- its merchant, joined from a compacted topic as of the transaction's time.
-- The model (fraud-per-event.onnx) was trained by train_per_event.py on
-- exactly these features.
--
--   ./scripts/run-example.sh        (or: cargo run --release -- run examples/fraud/pipeline.sql)
--
-- runs on the embedded broker, with generators feeding 'transactions' and
-- 'merchant-risk'. KAFKA_BROKERS=host:9092 runs the same file against a real
-- cluster. windows.sql scores each card every minute on HOP window features.

SET 'pipeline.name' = 'fraud';
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

-- Reference data: one row per merchant, keyed by merchant id; a new record
-- for a merchant is a new version of its row, valid from updated_at.
CREATE TABLE merchant_risk (
  merchant   TEXT,
  risk       DOUBLE,
  category   TEXT,
  updated_at TIMESTAMP(3),
  PRIMARY KEY (merchant) NOT ENFORCED,
  WATERMARK FOR updated_at AS updated_at
) WITH (
  'connector' = 'upsert-kafka',
  'topic' = 'merchant-risk',
  'key.format' = 'raw',
  'value.format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS:-embedded}',
  -- Only on the embedded broker: the generator's merchants, written at start.
  'embedded.generator' = 'fraud-merchants'
);

CREATE TABLE transaction_scores WITH (
  'connector' = 'kafka',
  'topic' = 'transaction-scores',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS:-embedded}',
  'key.fields' = 'card_id'
);

CREATE MODEL fraud WITH ('path' = 'fraud-per-event.onnx');

CREATE VIEW transaction_features AS
SELECT t.card_id, t.merchant, t.amount, t.ts,
       count(*)      OVER last_1m  AS n_1m,
       sum(t.amount) OVER last_1m  AS sum_1m,
       count(*)      OVER last_10m AS n_10m,
       sum(t.amount) OVER last_10m AS sum_10m,
       count(DISTINCT t.merchant) OVER last_10m AS merchants_10m,
       count(*)      OVER last_1h  AS n_1h,
       sum(t.amount) OVER last_1h  AS sum_1h,
       t.amount / avg(t.amount) OVER last_1h AS amount_vs_1h
FROM transactions AS t
WINDOW last_1m  AS (PARTITION BY t.card_id ORDER BY t.ts
                    RANGE BETWEEN INTERVAL '1' MINUTE PRECEDING AND CURRENT ROW),
       last_10m AS (PARTITION BY t.card_id ORDER BY t.ts
                    RANGE BETWEEN INTERVAL '10' MINUTE PRECEDING AND CURRENT ROW),
       last_1h  AS (PARTITION BY t.card_id ORDER BY t.ts
                    RANGE BETWEEN INTERVAL '1' HOUR PRECEDING AND CURRENT ROW);

INSERT INTO transaction_scores
SELECT f.card_id, f.merchant, f.amount, f.ts, m.category, m.risk, f.n_10m,
       predict(fraud, f.amount, f.n_1m, f.sum_1m, f.n_10m, f.sum_10m,
               f.merchants_10m, f.n_1h, f.sum_1h, f.amount_vs_1h,
               coalesce(m.risk, 0.5)) AS p_fraud
FROM transaction_features AS f
LEFT JOIN merchant_risk FOR SYSTEM_TIME AS OF f.ts AS m
  ON f.merchant = m.merchant;
