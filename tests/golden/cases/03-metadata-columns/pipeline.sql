-- Kafka metadata columns: key, record timestamp, partition and offset.
CREATE TABLE tx (
  id TEXT,
  k TEXT METADATA FROM 'key',
  kts TIMESTAMP(3) METADATA FROM 'timestamp',
  p INT METADATA FROM 'partition',
  o BIGINT METADATA FROM 'offset'
) WITH (
  'connector' = 'kafka',
  'topic' = 'g03-tx',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g03-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out SELECT id, k, kts, p, o FROM tx;
