-- Event time from epoch-millis numbers, a 10-second TUMBLE, and min/max over the timestamp column.
CREATE TABLE tx (
  sensor TEXT,
  reading DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g25-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g25-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT sensor, window_start, window_end, count(*) AS n, min(ts) AS first_ts, max(ts) AS last_ts, avg(reading) AS mean
FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '10' SECOND))
GROUP BY sensor, window_start, window_end;
