-- The variance family as OVER aggregates over a 30-second RANGE frame.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g46-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g46-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT
  card_id,
  amount,
  ts,
  count(*) OVER w AS n_30s,
  stddev_samp(amount) OVER w AS sd,
  stddev(amount) OVER w AS sd2,
  stddev_pop(amount) OVER w AS sd_pop,
  var_samp(amount) OVER w AS var_s,
  var_pop(amount) OVER w AS var_p
FROM tx
WINDOW w AS (PARTITION BY card_id ORDER BY ts RANGE BETWEEN INTERVAL '30' SECOND PRECEDING AND CURRENT ROW);
