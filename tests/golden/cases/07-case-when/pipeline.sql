-- Searched and simple CASE expressions, including NULL inputs that fall through to ELSE.
CREATE TABLE tx (
  card_id TEXT,
  merchant TEXT,
  amount DOUBLE
) WITH (
  'connector' = 'kafka',
  'topic' = 'g07-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g07-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT
  card_id,
  CASE WHEN amount >= 1000 THEN 'high' WHEN amount >= 100 THEN 'mid' ELSE 'low' END AS band,
  CASE merchant WHEN 'shop' THEN 1 WHEN 'cafe' THEN 2 ELSE 0 END AS merchant_code,
  CASE WHEN amount IS NULL THEN -1.0 ELSE amount / 2 END AS half_or_flag,
  CASE WHEN merchant = 'shop' THEN 'S' END AS shop_flag
FROM tx;
