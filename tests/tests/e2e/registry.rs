//! The job registry against the test broker: a model larger than one Kafka message is
//! shipped in chunks and put back together byte for byte; a resubmit
//! replaces the job and tombstones the older version's chunks; `stop` marks
//! the job stopped.

use std::collections::BTreeMap;

use weir::cluster::registry::{CHUNK_BYTES, JobSpec, JobState, publish, read_registry, set_state};
use weir::connection::Connection;
use weir_tests::apache_kafka::kafka;

fn spec(version: &str) -> JobSpec {
    JobSpec {
        name: "big-model".into(),
        version: version.into(),
        state: JobState::Running,
        sql_file: "p.sql".into(),
        sql: "-- not planned here".into(),
        env: BTreeMap::new(),
        files: Vec::new(),
        submitted_at_ms: 0,
    }
}

#[test]
fn large_files_travel_in_chunks_and_resubmits_replace_them() {
    let _shared = crate::shared();
    let cluster = Connection::plain(kafka().expect("the test broker").bootstrap());
    let topic = "weir-jobs-test";
    // Two and a half chunks, no two chunks alike.
    let big: Vec<u8> = (0..CHUNK_BYTES * 5 / 2)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let small = b"tiny".to_vec();
    let v1 = publish(
        &cluster,
        topic,
        spec("v1"),
        &[
            ("models/big.onnx".into(), big.clone()),
            ("s.onnx".into(), small.clone()),
        ],
    )
    .expect("v1 is published");
    assert_eq!(v1.files[0].chunks, 3);

    let registry = read_registry(&cluster, topic).expect("the registry is read");
    let got = &registry.jobs["big-model"];
    assert_eq!(got, &v1);
    assert!(registry.file(got, 0).expect("the big file") == big);
    assert_eq!(registry.file(got, 1).expect("the small file"), small);

    let v2 = publish(
        &cluster,
        topic,
        spec("v2"),
        &[("s.onnx".into(), b"other".to_vec())],
    )
    .expect("v2 is published");
    let registry = read_registry(&cluster, topic).expect("the registry is read");
    assert_eq!(registry.jobs["big-model"], v2);
    assert_eq!(registry.file(&v2, 0).expect("v2's file"), b"other");
    assert!(
        registry.file(&v1, 0).is_err(),
        "the replaced version's chunks are tombstoned"
    );

    set_state(&cluster, topic, "big-model", JobState::Stopped).expect("stopped");
    let registry = read_registry(&cluster, topic).expect("the registry is read");
    assert_eq!(registry.jobs["big-model"].state, JobState::Stopped);
    assert!(
        set_state(&cluster, topic, "no-such-job", JobState::Stopped).is_err(),
        "stopping an unknown job fails"
    );
}
