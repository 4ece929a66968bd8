//! How weir reaches a Kafka cluster: its bootstrap servers and the properties
//! that connect to it (TLS, SASL, ...). Every client weir makes for that
//! cluster starts from its [`Connection`]: the reachability check, metadata
//! and admin clients, consumers, producers, the job registry.
//!
//! A table's connection is its `properties.bootstrap.servers` plus those of
//! its `properties.*` that are about connecting ([`is_connection_property`]);
//! the rest (fetch sizes, linger, ...) stay with the table's own consumer or
//! producer.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::ClientConfig;
use weir_sql::KafkaTable;

/// A Kafka cluster and how to connect to it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Connection {
    pub bootstrap: String,
    /// librdkafka properties for connecting: `security.protocol`, `ssl.*`,
    /// `sasl.*`, ... Their values may be secrets: never print them
    /// ([`Connection`]'s `Debug` and `Display` show the bootstrap only).
    pub properties: BTreeMap<String, String>,
}

impl Connection {
    /// A cluster reached without any properties (PLAINTEXT).
    pub fn plain(bootstrap: &str) -> Connection {
        Connection {
            bootstrap: bootstrap.to_owned(),
            properties: BTreeMap::new(),
        }
    }

    /// The cluster a table's records live on.
    pub fn of(table: &KafkaTable) -> Connection {
        Connection::with(&table.bootstrap_servers, &table.properties)
    }

    /// `bootstrap`, with the connection properties among `properties`.
    pub fn with(bootstrap: &str, properties: &BTreeMap<String, String>) -> Connection {
        Connection {
            bootstrap: bootstrap.to_owned(),
            properties: properties
                .iter()
                .filter(|(k, _)| is_connection_property(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The connection a client configuration holds.
    pub fn from_config(config: &ClientConfig) -> Connection {
        // `config_map` masks secrets: the keys from it, the values from `get`.
        let set: BTreeMap<String, String> = config
            .config_map()
            .into_keys()
            .filter_map(|k| Some((k.to_owned(), config.get(k)?.to_owned())))
            .collect();
        Connection::with(config.get("bootstrap.servers").unwrap_or_default(), &set)
    }

    /// A client configuration that reaches the cluster; the caller adds what
    /// its client needs.
    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("bootstrap", &self.bootstrap)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.bootstrap)
    }
}

/// Whether a librdkafka property is about reaching and authenticating to the
/// cluster (and so belongs to every client of it), rather than to one
/// consumer or producer.
pub fn is_connection_property(key: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "security.",
        "ssl.",
        "ssl_",
        "sasl.",
        "enable.sasl.",
        "enable.ssl.",
        "https.",
        "socket.",
        "broker.address.",
        "client.dns.",
        "reconnect.backoff.",
        "api.version.",
        "broker.version.",
    ];
    const KEYS: &[&str] = &["client.id", "client.rack", "connections.max.idle.ms"];
    PREFIXES.iter().any(|p| key.starts_with(p)) || KEYS.contains(&key)
}

/// Whether a librdkafka property's value is a secret (a password, a key, a
/// client secret, a JAAS line): never shown in logs, plans or APIs.
pub fn is_secret_property(key: &str) -> bool {
    key.ends_with(".password")
        || key.ends_with(".secret")
        || key == "sasl.jaas.config"
        || key == "ssl.key.pem"
        || key == "ssl_key"
        || key == "sasl.oauthbearer.config"
}

/// A `${VAR}` value as it may be shown: "(secret)" when it is, or holds, the
/// value of a secret property among `properties` (every table's).
pub fn shown_value<'a>(
    value: &'a str,
    properties: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> &'a str {
    let secret = properties
        .into_iter()
        .any(|(k, v)| is_secret_property(k) && !value.is_empty() && v.contains(value));
    if secret { "(secret)" } else { value }
}

/// Connection properties given as `KEY=VALUE` arguments and, first, the
/// lines of a properties file (blank lines and `#` comments skipped); an
/// argument overrides the file.
pub fn parse_properties(
    args: &[String],
    file: Option<&std::path::Path>,
) -> anyhow::Result<BTreeMap<String, String>> {
    use anyhow::Context as _;
    let mut out = BTreeMap::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the properties file {}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) =
                split_property(line).with_context(|| format!("{}:{}", path.display(), n + 1))?;
            out.insert(k, v);
        }
    }
    for arg in args {
        let (k, v) = split_property(arg)?;
        out.insert(k, v);
    }
    Ok(out)
}

fn split_property(text: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        // Never the text itself: it may hold a secret.
        _ => anyhow::bail!("a property is KEY=VALUE (a line without '=' or without a key)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_connection_keeps_what_connects_and_drops_client_tuning() {
        let c = Connection::with(
            "b:9093",
            &props(&[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanisms", "SCRAM-SHA-512"),
                ("sasl.password", "hunter2"),
                ("ssl.ca.location", "/ca.pem"),
                ("enable.ssl.certificate.verification", "true"),
                ("https.ca.location", "/idp-ca.pem"),
                ("fetch.wait.max.ms", "50"),
                ("linger.ms", "20"),
            ]),
        );
        assert_eq!(
            c.properties.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "enable.ssl.certificate.verification",
                "https.ca.location",
                "sasl.mechanisms",
                "sasl.password",
                "security.protocol",
                "ssl.ca.location",
            ]
        );
        let config = c.config();
        assert_eq!(config.get("bootstrap.servers"), Some("b:9093"));
        assert_eq!(config.get("sasl.password"), Some("hunter2"));
        assert_eq!(Connection::from_config(&config), c);
    }

    #[test]
    fn properties_come_from_a_file_and_arguments_override_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client.properties");
        std::fs::write(
            &file,
            "# secured\nsecurity.protocol=SASL_SSL\n\nsasl.password = p=w\n",
        )
        .unwrap();
        let got = parse_properties(&["security.protocol=SSL".into()], Some(&file)).unwrap();
        assert_eq!(got["security.protocol"], "SSL");
        assert_eq!(got["sasl.password"], "p=w");
        let err = parse_properties(&["hunter2".into()], None).unwrap_err();
        assert!(!format!("{err:#}").contains("hunter2"), "{err:#}");
    }

    #[test]
    fn variables_that_feed_a_secret_property_are_not_shown() {
        let table = props(&[
            ("sasl.username", "weir"),
            ("sasl.password", "hunter2"),
            ("ssl.ca.location", "/ca.pem"),
        ]);
        assert_eq!(shown_value("hunter2", &table), "(secret)");
        assert_eq!(shown_value("weir", &table), "weir");
        assert_eq!(shown_value("/ca.pem", &table), "/ca.pem");
        assert_eq!(shown_value("", &table), "");
    }

    #[test]
    fn a_connection_never_prints_its_properties_values() {
        let c = Connection::with("b:9093", &props(&[("sasl.password", "hunter2")]));
        let shown = format!("{c} {c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("b:9093") && shown.contains("sasl.password"));
    }
}
