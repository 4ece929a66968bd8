-- Case 69's temporal LEFT JOIN, written in a view: the view keeps its FOR SYSTEM_TIME AS OF.
-- Event-time temporal LEFT JOIN of a stream with an upsert-kafka table: each row gets the version
-- of its merchant valid at t.ts (greatest updated_at <= t.ts; a tie goes to the later message).
-- The table's watermark delay (30 s) exceeds its topic's disorder, so no version is late.
CREATE TABLE tx (
  card_id TEXT,
  merchant TEXT,
  amount DOUBLE,
  ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'g78-tx',
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
  WATERMARK FOR updated_at AS updated_at - INTERVAL '30' SECOND
) WITH (
  'connector' = 'upsert-kafka',
  'topic' = 'g78-risk',
  'key.format' = 'raw',
  'value.format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g78-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

CREATE VIEW enriched AS
SELECT t.card_id, t.merchant, t.amount, t.ts, m.risk, m.category, t.amount * m.risk AS weighted
FROM tx AS t
LEFT JOIN merchant_risk FOR SYSTEM_TIME AS OF t.ts AS m
  ON t.merchant = m.merchant;

INSERT INTO out
SELECT card_id, merchant, amount, ts, risk, category, weighted FROM enriched;
