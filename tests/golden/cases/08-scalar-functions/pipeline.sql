-- DataFusion scalar functions in a projection.
CREATE TABLE tx (
  card_id TEXT,
  merchant TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3)
) WITH (
  'connector' = 'kafka',
  'topic' = 'g08-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g08-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT
  card_id,
  upper(merchant) AS m_upper,
  lower(card_id) AS id_lower,
  concat(card_id, ':', coalesce(merchant, 'n/a')) AS tag,
  abs(amount) AS abs_amount,
  round(amount, 1) AS amount_1dp,
  coalesce(merchant, 'n/a') AS merchant_or_na,
  character_length(coalesce(merchant, '')) AS m_len,
  date_trunc('minute', ts) AS minute
FROM tx;
