-- Flink's job in bench/flink_hop.py, in weir: the fraud example's HOP(1 min,
-- 10 min) features per card (no predict: Flink has no ONNX) over the same
-- JSON-lines file, read with the filesystem source (bench/weir_bench.py
-- variant weir-file sets WEIR_BENCH_EVENTS to the file). Flink writes JSON
-- lines to files; weir writes them to a topic on the broker in KAFKA_BROKERS.

SET 'pipeline.name' = 'fraud-windows-file';
SET 'checkpoint.interval' = '10s';

CREATE TABLE transactions (
  card_id  TEXT,
  merchant TEXT,
  amount   DOUBLE,
  ts       TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'filesystem',
  'path' = '${WEIR_BENCH_EVENTS}',
  'format' = 'json'
);

CREATE TABLE card_features WITH (
  'connector' = 'kafka',
  'topic' = 'card-features',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'key.fields' = 'card_id'
);

INSERT INTO card_features
SELECT card_id, window_start, window_end,
       count(*)                 AS n,
       avg(amount)              AS avg_amount,
       max(amount)              AS max_amount,
       stddev_pop(amount)       AS sd_amount,
       count(DISTINCT merchant) AS n_merchants
FROM TABLE(HOP(TABLE transactions, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '10' MINUTE))
GROUP BY card_id, window_start, window_end;
