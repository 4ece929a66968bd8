-- Plan-time error: a table join must be on the table's whole primary key, not on another column.
CREATE TABLE tx (
  card_id TEXT,
  category TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g75-tx',
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
  'connector' = 'kafka',
  'topic' = 'g75-risk',
  'format' = 'json',
  'scan.mode' = 'table',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g75-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out
SELECT t.card_id, t.amount, m.risk
FROM tx AS t
LEFT JOIN merchant_risk AS m
  ON t.category = m.category;
