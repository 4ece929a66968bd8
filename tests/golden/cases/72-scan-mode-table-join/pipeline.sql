-- weir's form of a versioned table ('connector' = 'kafka', 'scan.mode' = 'table', PRIMARY KEY) in a
-- temporal LEFT JOIN on an expression of the stream, with a WHERE on a table column.
CREATE TABLE tx (
  card_id TEXT,
  shop TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g72-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE merchant_risk (
  merchant TEXT,
  risk DOUBLE,
  category TEXT,
  updated_at TIMESTAMP(3),
  PRIMARY KEY (merchant) NOT ENFORCED,
  WATERMARK FOR updated_at AS updated_at
) WITH (
  'connector' = 'kafka',
  'topic' = 'g72-risk',
  'format' = 'json',
  'scan.mode' = 'table',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g72-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT t.card_id, t.shop, t.amount, t.ts, m.risk, m.category, m.updated_at
FROM tx AS t
LEFT JOIN merchant_risk FOR SYSTEM_TIME AS OF t.ts AS m
  ON m.merchant = lower(t.shop)
WHERE m.risk > 0.5 OR m.risk IS NULL;
