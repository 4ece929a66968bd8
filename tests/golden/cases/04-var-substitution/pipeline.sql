-- ${VAR:-default} in WITH values: unset variables take the default, set ones their value.
CREATE TABLE tx (
  id TEXT,
  amount DOUBLE
) WITH (
  'connector' = 'kafka',
  'topic' = '${WEIR_GOLDEN_UNSET_SOURCE_TOPIC:-g04-tx}',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS:-127.0.0.1:1}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset'
);

CREATE TABLE out WITH (
  'connector' = 'kafka',
  'topic' = 'g04-${WEIR_GOLDEN_UNSET_SUFFIX:-out}',
  'format' = 'json',
  'properties.bootstrap.servers' = '${KAFKA_BROKERS}'
);

INSERT INTO out SELECT id, amount FROM tx;
