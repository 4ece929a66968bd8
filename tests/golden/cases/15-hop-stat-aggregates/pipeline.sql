-- HOP(slide 1 min, size 2 min) per card with count(DISTINCT), the variance family and a median.
CREATE TABLE tx (
  card_id TEXT,
  merchant TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g15-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g15-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT
  card_id,
  window_start,
  window_end,
  count(DISTINCT merchant) AS merchants,
  stddev(amount) AS sd,
  stddev_pop(amount) AS sd_pop,
  var_samp(amount) AS var_s,
  variance(amount) AS var_s2,
  var_pop(amount) AS var_p,
  approx_percentile_cont(amount, 0.5) AS median
FROM TABLE(HOP(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '2' MINUTE))
GROUP BY card_id, window_start, window_end;
