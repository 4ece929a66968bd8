-- WHERE with AND/OR, BETWEEN, NOT IN, LIKE and IS NULL, under SQL three-valued logic.
CREATE TABLE tx (
  card_id TEXT,
  merchant TEXT,
  amount DOUBLE
) WITH (
  'connector' = 'kafka',
  'topic' = 'g06-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g06-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT card_id, merchant, amount
FROM tx
WHERE (amount BETWEEN 10 AND 100 AND merchant NOT IN ('blocked', 'banned'))
   OR card_id LIKE 'vip-%'
   OR merchant IS NULL;
