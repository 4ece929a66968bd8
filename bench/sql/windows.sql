-- The end-to-end benchmark's pipeline (bench/weir_bench.py): the fraud
-- example's HOP window features and scoring (examples/fraud/windows.sql),
-- read to the end of the topic (bounded) from the broker in KAFKA_BROKERS.

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
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'dead-letter.topic' = 'transactions-dlq',
  -- bench/data.py keys each event by its card: a cluster job needs no
  -- repartition for state keyed by card (cluster_bench.py --repartition
  -- drops this line to measure one).
  'key.fields' = 'card_id',
  'scan.bounded.mode' = 'latest-offset',
  -- tansu answers a fetch with one partition's data unless partitions are
  -- capped; capped, the four partitions are read interleaved and the
  -- watermark (least over partitions) moves during the run.
  'properties.fetch.max.bytes' = '1048576',
  'properties.max.partition.fetch.bytes' = '262144'
);

CREATE TABLE card_scores WITH (
  'connector' = 'kafka',
  'topic' = 'card-scores',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'key.fields' = 'card_id'
);

CREATE MODEL fraud WITH ('path' = '../../examples/fraud/fraud.onnx');

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
