-- 'format' = 'raw': the value is one STRING column; a raw sink writes one column's bytes.
CREATE TABLE lines (
  line STRING,
  k STRING METADATA FROM 'key'
) WITH (
  'connector' = 'kafka',
  'topic' = 'g55-lines',
  'format' = 'raw',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE shout WITH (
  'connector' = 'kafka',
  'topic' = 'g55-shout',
  'format' = 'raw',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

CREATE TABLE lengths WITH (
  'connector' = 'kafka',
  'topic' = 'g55-lengths',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO shout SELECT upper(line) AS line FROM lines WHERE line <> '';

INSERT INTO lengths SELECT k, line, character_length(line) AS n FROM lines;
