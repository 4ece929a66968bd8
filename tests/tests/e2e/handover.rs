//! The changelog handover (`changelog::await_handover`) against the test broker.
//!
//! A cluster task waits for its partition's previous owner before it runs.
//! A worker tells the two reasons for waiting apart by the task's
//! `handover_waiting_since_ms`: it is set only while an owner that is seen
//! alive (it wrote after the wait began) holds the partition. A group that
//! gave the partition to two members at once looks like that, and the worker
//! rejoins the group after a while; a killed owner only goes silent, and
//! its partition is taken over after the lease without that mark.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use weir::changelog::await_handover;
use weir::connection::Connection;
use weir::kafka::producer_config;
use weir::sink::Sink;
use weir_tests::apache_kafka::kafka;
use weir_tests::kafka::create_topic;

const OWNER: &str = "00000000000000aa";
const NEXT: u64 = 0xbb;

fn sink(brokers: &str) -> Sink {
    Sink::new(&producer_config(
        &Connection::plain(brokers),
        &BTreeMap::new(),
    ))
    .expect("a producer")
}

fn write(sink: &Sink, topic: &str, key: &str, value: &str) {
    sink.send_to(topic, 0, key.as_bytes(), Some(value.as_bytes()))
        .expect("a changelog record is produced");
    sink.flush().expect("it is acknowledged");
}

/// Runs `await_handover` for run `NEXT` on a thread: its result, the
/// waiting mark, and the stop flag.
type Waiter = (
    thread::JoinHandle<anyhow::Result<bool>>,
    Arc<AtomicU64>,
    Arc<AtomicBool>,
);

fn wait_for_handover(brokers: &str, topic: &str, lease: Duration) -> Waiter {
    let waiting = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (w, s) = (waiting.clone(), stop.clone());
    let (b, t) = (brokers.to_owned(), topic.to_owned());
    let handle = thread::spawn(move || await_handover(&sink(&b), &t, 0, lease, &s, NEXT, &w));
    (handle, waiting, stop)
}

#[test]
fn a_live_owner_marks_the_wait_and_a_silent_one_does_not() {
    let _alone = crate::exclusive();
    let b = kafka().expect("the test broker").bootstrap().to_owned();
    let owner = sink(&b);

    // A live owner: it claimed the partition and commits every 300 ms.
    create_topic(&b, "live-changelog", 1).expect("a changelog topic");
    write(&owner, "live-changelog", &format!("claim.{OWNER}"), "");
    write(&owner, "live-changelog", &format!("0.{OWNER}.commit"), "c0");
    let (handle, waiting, _stop) = wait_for_handover(&b, "live-changelog", Duration::from_secs(5));
    let started = Instant::now();
    let mut n = 1;
    while waiting.load(Ordering::Relaxed) == 0 && started.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(300)); // the owner's checkpoint interval
        write(
            &owner,
            "live-changelog",
            &format!("{n}.{OWNER}.commit"),
            "c",
        );
        n += 1;
    }
    let since = waiting.load(Ordering::Relaxed);
    assert!(
        since > 0,
        "a wait for an owner that keeps writing is marked ({n} commits written)"
    );
    assert!(!handle.is_finished(), "the live owner keeps its partition");
    // Its release ends the wait: the partition is taken, the mark cleared.
    write(
        &owner,
        "live-changelog",
        &format!("{n}.{OWNER}.release"),
        "",
    );
    let took = handle.join().expect("no panic").expect("the handover");
    assert!(took, "the released partition is taken over");
    assert_eq!(waiting.load(Ordering::Relaxed), 0, "no mark after the wait");

    // A killed owner: one commit, then silence. Its partition is taken over
    // after the lease, and the wait is never marked as one for a live owner.
    create_topic(&b, "dead-changelog", 1).expect("a changelog topic");
    let started = Instant::now();
    write(&owner, "dead-changelog", &format!("claim.{OWNER}"), "");
    write(&owner, "dead-changelog", &format!("0.{OWNER}.commit"), "c0");
    let lease = Duration::from_secs(3);
    let (handle, waiting, stop) = wait_for_handover(&b, "dead-changelog", lease);
    let mut marked = 0;
    while !handle.is_finished() && started.elapsed() < Duration::from_secs(60) {
        marked = marked.max(waiting.load(Ordering::Relaxed));
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let took = handle.join().expect("no panic").expect("the handover");
    assert!(took, "a silent owner's partition is taken over");
    assert!(
        started.elapsed() >= lease,
        "not before the lease: {:?}",
        started.elapsed()
    );
    assert_eq!(marked, 0, "a silent owner's wait is not marked");
}
