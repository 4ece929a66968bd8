-- HAVING on a TUMBLE aggregate with a two-column key, and on a HOP aggregate.
CREATE TABLE tx (
  card_id TEXT,
  merchant TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g16-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE busy_pairs WITH (
  'connector' = 'kafka',
  'topic' = 'g16-busy-pairs',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

CREATE TABLE big_spenders WITH (
  'connector' = 'kafka',
  'topic' = 'g16-big-spenders',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO busy_pairs
SELECT card_id, merchant, window_start, window_end, count(*) AS n, sum(amount) AS total
FROM TABLE(TUMBLE(TABLE tx, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY card_id, merchant, window_start, window_end
HAVING count(*) >= 2 AND sum(amount) > 50;

INSERT INTO big_spenders
SELECT card_id, window_start, window_end, max(amount) AS hi
FROM TABLE(HOP(TABLE tx, DESCRIPTOR(ts), INTERVAL '30' SECOND, INTERVAL '1' MINUTE))
GROUP BY card_id, window_start, window_end
HAVING max(amount) >= 40;
