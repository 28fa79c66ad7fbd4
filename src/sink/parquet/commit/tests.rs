//! The commit protocol on a local directory: visible names, replacement, crash recovery,
//! fencing of a writer that lost its partition.

use super::*;

fn stage(dataset: &Dataset, dir: &str, tp: &TopicPartition, first: i64, last: i64) -> StagedFile {
    let (tmp_path, file) = dataset.create_temp(dir, tp, first, "group").unwrap();
    file.sync_all().unwrap();
    StagedFile {
        dir: dir.into(),
        tmp_path,
        name: Dataset::file_name(tp, first, last),
        rows: 1,
    }
}

/// A manifest as a crash right after the commit point leaves it.
fn write_manifest(dataset: &Dataset, tp: &TopicPartition, manifest: &Manifest) {
    let path = join(&dataset.manifest_dir(tp), &manifest_name(manifest.seq));
    assert!(dataset
        .store
        .create(&path, serde_json::to_vec(manifest).unwrap())
        .unwrap());
}

fn data_file(dir: &str, first: i64, last: i64) -> DataFile {
    DataFile {
        first,
        last,
        dir: dir.into(),
    }
}

#[test]
fn a_committed_group_is_visible_under_provenance_names() {
    let root = tempfile::tempdir().unwrap();
    let dataset = Dataset::local(root.path(), None);
    let tp = TopicPartition::new("t", 0);
    let files = [
        stage(&dataset, "date=a", &tp, 0, 9),
        stage(&dataset, "date=b", &tp, 0, 9),
    ];
    let committed = dataset.commit(&tp, 0, 9, &files, &[]).unwrap();
    assert_eq!(committed.files, 2);
    for dir in ["date=a", "date=b"] {
        assert!(root
            .path()
            .join(dir)
            .join(Dataset::file_name(&tp, 0, 9))
            .exists());
    }
    assert!(!files[0].tmp_path.exists());
    let recovered = dataset.recover(&tp).unwrap();
    assert_eq!(recovered.durable_through, Some(9));
    assert_eq!(
        recovered.files.into_iter().collect::<Vec<_>>(),
        [data_file("date=a", 0, 9), data_file("date=b", 0, 9)]
    );
}

#[test]
fn file_names_round_trip_and_belong_to_one_partition() {
    let tp = TopicPartition::new("a-b", 1);
    let name = Dataset::file_name(&tp, 5, 99);
    assert_eq!(Dataset::parse_file_name(&tp, &name), Some((5, 99)));
    assert_eq!(
        Dataset::parse_file_name(&TopicPartition::new("a-b", 11), &name),
        None
    );
    assert_eq!(
        Dataset::parse_file_name(&TopicPartition::new("a", 1), &name),
        None
    );
    assert_eq!(Dataset::parse_file_name(&tp, "a-b-1-5-99.parquet"), None);
}

#[test]
fn a_commit_deletes_the_files_it_replaces_even_after_a_crash() {
    let root = tempfile::tempdir().unwrap();
    let dataset = Dataset::local(root.path(), None);
    let tp = TopicPartition::new("t", 0);
    dataset
        .commit(&tp, 0, 4, &[stage(&dataset, "d=1", &tp, 0, 4)], &[])
        .unwrap();
    dataset
        .commit(&tp, 5, 9, &[stage(&dataset, "d=2", &tp, 5, 9)], &[])
        .unwrap();
    // Merge both into one file, as a segment's end does.
    let merged = stage(&dataset, "d=1", &tp, 0, 9);
    dataset
        .commit(
            &tp,
            0,
            9,
            &[merged],
            &[data_file("d=1", 0, 4), data_file("d=2", 5, 9)],
        )
        .unwrap();
    let recovered = dataset.recover(&tp).unwrap();
    assert_eq!(recovered.durable_through, Some(9));
    assert_eq!(
        recovered.files.into_iter().collect::<Vec<_>>(),
        [data_file("d=1", 0, 9)]
    );

    // A crash after the manifest, before the renames and deletions.
    let newer = stage(&dataset, "d=3", &tp, 0, 9);
    let manifest = Manifest {
        topic: "t".into(),
        partition: 0,
        seq: 9,
        first_offset: Some(0),
        last_offset: Some(9),
        files: vec![ManifestFile {
            dir: newer.dir.clone(),
            tmp: file_name_of(&newer.tmp_path),
            name: newer.name.clone(),
            rows: 1,
        }],
        replaces: vec![data_file("d=1", 0, 9).relative_path(&tp)],
    };
    write_manifest(&dataset, &tp, &manifest);
    let recovered = dataset.recover(&tp).unwrap();
    assert_eq!(
        recovered.files.into_iter().collect::<Vec<_>>(),
        [data_file("d=3", 0, 9)]
    );
}

#[test]
fn recovery_finishes_an_interrupted_commit_and_drops_torn_writes() {
    let root = tempfile::tempdir().unwrap();
    let dataset = Dataset::local(root.path(), None);
    let tp = TopicPartition::new("t", 1);
    let other = TopicPartition::new("t", 11);
    let a = stage(&dataset, "d=1", &tp, 10, 19);
    let b = stage(&dataset, "d=2", &tp, 10, 19);
    // Crash after the manifest was written but before any rename.
    let manifest = Manifest {
        topic: "t".into(),
        partition: 1,
        seq: 1,
        first_offset: Some(10),
        last_offset: Some(19),
        files: [&a, &b]
            .iter()
            .map(|f| ManifestFile {
                dir: f.dir.clone(),
                tmp: file_name_of(&f.tmp_path),
                name: f.name.clone(),
                rows: 1,
            })
            .collect(),
        replaces: Vec::new(),
    };
    write_manifest(&dataset, &tp, &manifest);
    // A later group was being written when the process died: torn, never committed.
    let torn = stage(&dataset, "d=2", &tp, 20, 29);
    let not_ours = stage(&dataset, "d=2", &other, 20, 29);
    let backfill = Dataset::local(root.path(), Some("backfill-1".into()));
    let backfills = stage(&backfill, "d=2", &tp, 20, 29);

    assert_eq!(dataset.recover(&tp).unwrap().durable_through, Some(19));
    assert!(root
        .path()
        .join("d=1")
        .join(Dataset::file_name(&tp, 10, 19))
        .exists());
    assert!(root
        .path()
        .join("d=2")
        .join(Dataset::file_name(&tp, 10, 19))
        .exists());
    assert!(!torn.tmp_path.exists(), "torn write removed");
    assert!(
        not_ours.tmp_path.exists(),
        "another partition's temp file is left alone"
    );
    assert!(
        backfills.tmp_path.exists(),
        "another writer's temp file is left alone"
    );
    assert_eq!(
        dataset
            .recover(&TopicPartition::new("t", 2))
            .unwrap()
            .durable_through,
        None
    );
    // The backfill writer has its own manifests: none yet.
    let recovered = backfill.recover(&tp).unwrap();
    assert_eq!(recovered.durable_through, None);
    assert_eq!(
        recovered.files.len(),
        2,
        "but it sees the partition's files"
    );
    assert!(!backfills.tmp_path.exists());
}

#[test]
fn a_writer_that_lost_its_partition_cannot_commit() {
    let root = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("t", 0);
    let old = Dataset::local(root.path(), None);
    let new = Dataset::local(root.path(), None);
    old.recover(&tp).unwrap();
    old.commit(&tp, 0, 9, &[stage(&old, "d=1", &tp, 0, 9)], &[])
        .unwrap();
    assert_eq!(new.recover(&tp).unwrap().durable_through, Some(9));
    let zombie = stage(&old, "d=1", &tp, 10, 19);
    let zombie_temp = zombie.tmp_path.clone();
    let refused = old.commit(&tp, 10, 19, &[zombie], &[]);
    assert!(
        matches!(refused, Err(CommitError::Fenced { .. })),
        "{refused:?}"
    );
    assert!(!zombie_temp.exists(), "the refused commit's temp is gone");
    new.commit(&tp, 10, 14, &[stage(&new, "d=1", &tp, 10, 14)], &[])
        .unwrap();
    new.commit(&tp, 15, 19, &[stage(&new, "d=1", &tp, 15, 19)], &[])
        .unwrap();
    // Its number was deleted meanwhile; the later manifest still fences it.
    let refused = old.commit(&tp, 20, 29, &[stage(&old, "d=1", &tp, 20, 29)], &[]);
    assert!(matches!(refused, Err(CommitError::Fenced { .. })));
    let recovered = Dataset::local(root.path(), None).recover(&tp).unwrap();
    assert_eq!(recovered.durable_through, Some(19));
    assert_eq!(
        recovered.files.into_iter().collect::<Vec<_>>(),
        [
            data_file("d=1", 0, 9),
            data_file("d=1", 10, 14),
            data_file("d=1", 15, 19)
        ]
    );
}

#[test]
fn manifests_written_before_sequences_still_recover() {
    assert_eq!(
        manifest_seq("00000000000000000010-00000000000000000019.json"),
        Some(0)
    );
    assert_eq!(manifest_seq("00000000000000000007.json"), Some(7));
    assert_eq!(manifest_seq(".00000000000000000007.json.12.tmp"), None);
    assert_eq!(manifest_seq("notes.json"), None);
}

#[test]
fn recovery_removes_the_temp_of_a_manifest_create_killed_before_its_cleanup() {
    let root = tempfile::tempdir().unwrap();
    let dataset = Dataset::local(root.path(), None);
    let tp = TopicPartition::new("t", 0);
    dataset.recover(&tp).unwrap();
    dataset
        .commit(&tp, 0, 9, &[stage(&dataset, "d=1", &tp, 0, 9)], &[])
        .unwrap();
    // What a kill between the temp's write and its removal leaves.
    let manifests = root.path().join("_sluice/manifests/t-0");
    let stray = manifests.join(".00000000000000000009.json.4242.tmp");
    std::fs::write(&stray, b"{}").unwrap();
    let again = Dataset::local(root.path(), None);
    assert_eq!(again.recover(&tp).unwrap().durable_through, Some(9));
    assert!(!stray.exists(), "the stray temp is removed");
    let left: Vec<String> = std::fs::read_dir(&manifests)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 1, "only the new claim: {left:?}");
}
