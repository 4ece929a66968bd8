-- A raw record value is one column.
CREATE TABLE lines (
  line STRING,
  other STRING
) WITH (
  'connector' = 'kafka',
  'topic' = 'g58-lines',
  'format' = 'raw',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g58-out',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out SELECT line FROM lines;
