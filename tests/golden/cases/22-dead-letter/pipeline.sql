-- Bad messages go byte-for-byte to the dead-letter topic; good rows in the same input are unaffected.
CREATE TABLE tx (
  card_id TEXT,
  amount DOUBLE,
  ok BOOLEAN,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g22-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset',
  'dead-letter.topic' = 'g22-dlq'
);

CREATE TABLE rows_out WITH (
  'connector' = 'kafka',
  'topic' = 'g22-rows',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

CREATE TABLE totals WITH (
  'connector' = 'kafka',
  'topic' = 'g22-totals',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO rows_out SELECT card_id, amount, ok, ts FROM tx;

INSERT INTO totals
SELECT card_id, window_start, window_end, count(*) AS n, sum(amount) AS total
FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY card_id, window_start, window_end;
