-- Latest-value joins (no FOR SYSTEM_TIME): every row sees the last message of its key in the
-- table topic, whatever its ts. A table read this way needs no WATERMARK.
CREATE TABLE tx (
  card_id TEXT,
  merchant TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g71-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE merchant_risk (
  merchant TEXT,
  risk DOUBLE,
  category TEXT,
  PRIMARY KEY (merchant) NOT ENFORCED
) WITH (
  'connector' = 'upsert-kafka',
  'topic' = 'g71-risk',
  'key.format' = 'raw',
  'value.format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g71-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

CREATE TABLE matched WITH (
  'connector' = 'kafka',
  'topic' = 'g71-matched',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT t.card_id, t.merchant, t.amount, t.ts, m.risk, m.category, t.amount * m.risk AS weighted
FROM tx AS t
LEFT JOIN merchant_risk AS m
  ON t.merchant = m.merchant;

INSERT INTO matched
SELECT t.card_id, t.merchant, m.category, t.amount
FROM tx AS t
INNER JOIN merchant_risk AS m
  ON t.merchant = m.merchant;
