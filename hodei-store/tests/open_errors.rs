//! Bad files and contention give clear errors naming the file, never a
//! panic; tampering with the audit chain on disk is detected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hodei_core::Timestamp;
use hodei_store::{
    AuditEntry, AuditRecord, ChainCheck, RedbStore, Store, StoreConfig, StoreError, decode, encode,
};
use redb::{Database, ReadableDatabase, TableDefinition};

const AUDIT: TableDefinition<'static, &'static [u8], &'static [u8]> = TableDefinition::new("audit");
const META: TableDefinition<'static, &'static [u8], &'static [u8]> = TableDefinition::new("meta");

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_foreign_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(
        &path,
        "these are not the bytes you are looking for\n".repeat(200),
    )
    .unwrap();
    let err = RedbStore::open(&path, StoreConfig::default()).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("notes.txt"), "{err}");
    // The database's own error is kept, and can be told apart by type.
    let source = std::error::Error::source(&err).expect("a source");
    assert!(
        source.downcast_ref::<redb::DatabaseError>().is_some(),
        "{source:?}"
    );
}

#[test]
fn a_corrupt_header_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hodei.redb");
    drop(RedbStore::open(&path, StoreConfig::default()).unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    for b in bytes.iter_mut().take(512) {
        *b ^= 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = RedbStore::open(&path, StoreConfig::default()).unwrap_err();
    assert!(err.to_string().contains("hodei.redb"), "{err}");
}

#[test]
fn corruption_past_the_header_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hodei.redb");
    rt().block_on(async {
        let s = RedbStore::open(&path, StoreConfig::default()).unwrap();
        for _ in 0..50 {
            let job = hodei_core::Job::new(
                hodei_core::JobId::new(),
                hodei_core::JobSpec::argv(["true"]),
                Timestamp(0),
            );
            s.insert_job(job).await.unwrap();
        }
    });
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        if i % 7 == 0 && i < len {
            *b = b.wrapping_mul(31).wrapping_add(7);
        }
    }
    std::fs::write(&path, &bytes).unwrap();
    // Either a clean refusal or a store whose reads fail cleanly.
    match RedbStore::open(&path, StoreConfig::default()) {
        Err(e) => assert!(e.to_string().contains("hodei.redb"), "{e}"),
        Ok(s) => {
            let _ = rt().block_on(s.recover());
        }
    }
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hodei.redb");
    let first = RedbStore::open(&path, StoreConfig::default()).unwrap();
    let err = RedbStore::open(&path, StoreConfig::default()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("already open"), "{err}");
    drop(first);
    RedbStore::open(&path, StoreConfig::default()).unwrap();
}

#[test]
fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hodei.redb");
    drop(RedbStore::open(&path, StoreConfig::default()).unwrap());
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(&b"format"[..], &99u32.to_be_bytes()[..])
            .unwrap();
        txn.commit().unwrap();
    }
    let err = RedbStore::open(&path, StoreConfig::default()).unwrap_err();
    assert!(
        matches!(err, StoreError::UnsupportedVersion { found: 99, .. }),
        "{err:?}"
    );
}

#[test]
fn tampering_with_the_audit_file_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hodei.redb");
    rt().block_on(async {
        let s = RedbStore::open(&path, StoreConfig::default()).unwrap();
        for i in 0..6 {
            s.append_audit(AuditEntry {
                at: Timestamp(i),
                actor: "acme".into(),
                action: "cancel".into(),
                detail: format!("job {i}"),
                ..AuditEntry::default()
            })
            .await
            .unwrap();
        }
        assert_eq!(
            s.verify_audit().await.unwrap(),
            ChainCheck::Intact { records: 6 }
        );
    });
    // Alter record 3 in place, as someone with the file could.
    {
        let db = Database::create(&path).unwrap();
        let read = db.begin_read().unwrap();
        let raw = read
            .open_table(AUDIT)
            .unwrap()
            .get(&3u64.to_be_bytes()[..])
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        drop(read);
        let mut rec: AuditRecord = decode("audit record", &raw).unwrap();
        rec.entry.actor = "mallory".into();
        let txn = db.begin_write().unwrap();
        txn.open_table(AUDIT)
            .unwrap()
            .insert(
                &3u64.to_be_bytes()[..],
                &encode("audit record", &rec).unwrap()[..],
            )
            .unwrap();
        txn.commit().unwrap();
    }
    rt().block_on(async {
        let s = RedbStore::open(&path, StoreConfig::default()).unwrap();
        assert!(matches!(
            s.verify_audit().await.unwrap(),
            ChainCheck::Broken { index: 3, .. }
        ));
    });
    // Removing the last record is detected too.
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(AUDIT)
            .unwrap()
            .remove(&5u64.to_be_bytes()[..])
            .unwrap();
        txn.commit().unwrap();
    }
    rt().block_on(async {
        let s = RedbStore::open(&path, StoreConfig::default()).unwrap();
        match s.verify_audit().await.unwrap() {
            ChainCheck::Broken { index, .. } => assert!(index <= 5),
            ok => panic!("truncation not detected: {ok:?}"),
        }
    });
}

#[test]
fn log_chunks_live_in_the_segment_file_and_damage_there_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hodei.redb");
    let segment = dir.path().join("hodei.redb.logs");
    rt().block_on(async {
        let job = hodei_core::JobId::new();
        {
            let s = RedbStore::open(&path, StoreConfig::default()).unwrap();
            for seq in 0..3u64 {
                let chunk = hodei_store::LogChunk {
                    stream: hodei_store::LogStream::Stdout,
                    at: Timestamp(seq),
                    data: vec![b'a' + seq as u8; 1000],
                };
                s.append_log(job, 1, seq, chunk).await.unwrap();
            }
        }
        // Reopened: the chunks come back whole, from the segment.
        assert!(std::fs::metadata(&segment).unwrap().len() >= 3000);
        let s = RedbStore::open(&path, StoreConfig::default()).unwrap();
        let page = s
            .read_logs(job, hodei_store::LogCursor::default(), 10)
            .await
            .unwrap();
        assert_eq!(page.entries.len(), 3);
        assert_eq!(page.entries[2].chunk.data, vec![b'c'; 1000]);
        drop(s);
        // Flip bytes in the segment: the read fails naming the file.
        let mut bytes = std::fs::read(&segment).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xFF;
        std::fs::write(&segment, &bytes).unwrap();
        let s = RedbStore::open(&path, StoreConfig::default()).unwrap();
        let err = s
            .read_logs(job, hodei_store::LogCursor::default(), 10)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("hodei.redb.logs"), "{err}");
    });
}
