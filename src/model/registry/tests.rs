use super::*;

fn manifest(name: &str) -> Manifest {
    Manifest {
        name: name.into(),
        version: String::new(),
        created_at: "2026-11-22T00:00:00Z".into(),
        description: String::new(),
        inputs: vec![TensorSpec {
            name: "x".into(),
            dtype: "float32".into(),
            shape: vec![Dim::Named("batch".into()), Dim::Fixed(3)],
        }],
        outputs: vec![],
        labels: Some(vec!["a".into(), "b".into()]),
        metrics: Default::default(),
        profile: None,
    }
}

#[test]
fn publish_numbers_versions_and_switches_current() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(dir.path());
    let model = dir.path().join("m.onnx");
    std::fs::write(&model, b"not really onnx").unwrap();
    let first = registry.publish(&model, manifest("m"), &[], true).unwrap();
    let second = registry.publish(&model, manifest("m"), &[], false).unwrap();
    assert_eq!(
        (first.version.as_str(), second.version.as_str()),
        ("1", "2")
    );
    assert_eq!(registry.current("m").unwrap().version, "1");
    registry.set_current("m", "2").unwrap();
    let current = registry.current("m").unwrap();
    assert_eq!(current.label(), "m/2");
    let read = registry.manifest(&current).unwrap();
    assert_eq!(read.version, "2");
    assert_eq!(read.inputs[0].fixed_tail(), Some(vec![3]));
    assert_eq!(registry.versions("m").unwrap().len(), 2);
}

/// A registry in an in-memory object store.
fn in_memory() -> Registry {
    let location = crate::storage::ObjectLocation {
        url: "memory://bucket/models".into(),
        store: Arc::new(object_store::memory::InMemory::new()),
        prefix: "models".into(),
    };
    let remote = remote::Remote::new(location).unwrap();
    Registry {
        root: remote.cache().to_owned(),
        remote: Some(Arc::new(remote)),
    }
}

#[test]
fn an_object_store_registry_publishes_and_serves_versions_from_its_cache() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    std::fs::write(&model, b"version one").unwrap();
    let tokenizer = dir.path().join("tokenizer.json");
    std::fs::write(&tokenizer, b"{}").unwrap();
    let registry = in_memory();
    assert!(matches!(
        registry.current("m"),
        Err(RegistryError::NoCurrent { .. })
    ));
    let first = registry
        .publish(&model, manifest("m"), &[&tokenizer], true)
        .unwrap();
    std::fs::write(&model, b"version two").unwrap();
    let second = registry.publish(&model, manifest("m"), &[], false).unwrap();
    assert_eq!(
        (first.label(), second.label()),
        ("m/1".into(), "m/2".into())
    );
    let current = registry.current("m").unwrap();
    assert_eq!(current.version, "1");
    assert_eq!(std::fs::read(current.model_path()).unwrap(), b"version one");
    assert!(current.dir.join("tokenizer.json").is_file());
    assert!(!current.dir.join(".claim").exists());
    registry.set_current("m", "2").unwrap();
    let current = registry.current("m").unwrap();
    assert_eq!(std::fs::read(current.model_path()).unwrap(), b"version two");
    assert_eq!(registry.manifest(&current).unwrap().version, "2");
    assert_eq!(registry.versions("m").unwrap().len(), 2);
}

#[test]
fn concurrent_publishers_never_share_a_version_number() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    std::fs::write(&model, b"model").unwrap();
    for registry in [Registry::new(dir.path().join("local")), in_memory()] {
        let numbers: Vec<String> = std::thread::scope(|scope| {
            let publishers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..4)
                            .map(|_| {
                                registry
                                    .publish(&model, manifest("m"), &[], false)
                                    .unwrap()
                                    .version
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            publishers
                .into_iter()
                .flat_map(|p| p.join().unwrap())
                .collect()
        });
        let distinct: std::collections::BTreeSet<u64> =
            numbers.iter().map(|n| n.parse().unwrap()).collect();
        assert_eq!(
            distinct.len(),
            16,
            "{} gave {numbers:?}",
            registry.describe()
        );
        assert_eq!(registry.versions("m").unwrap().len(), 16);
    }
}

#[test]
fn a_dead_publisher_s_number_is_skipped_and_its_version_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    std::fs::write(&model, b"model").unwrap();
    let registry = in_memory();
    let remote = registry.remote.clone().unwrap();
    registry.publish(&model, manifest("m"), &[], true).unwrap();
    // A publisher claimed 2, uploaded its model and died before the manifest.
    remote
        .location_for_tests()
        .put("m/2/.claim", b"{}".to_vec())
        .unwrap();
    remote
        .location_for_tests()
        .put("m/2/model.onnx", b"half".to_vec())
        .unwrap();
    let third = registry.publish(&model, manifest("m"), &[], false).unwrap();
    assert_eq!(third.version, "3");
    let published: Vec<String> = registry
        .versions("m")
        .unwrap()
        .into_iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(published, ["1", "3"]);
    registry.set_current("m", "2").unwrap();
    let err = registry.current("m").unwrap_err().to_string();
    assert!(
        err.contains("version 2") && err.contains("not complete"),
        "{err}"
    );
}

#[test]
fn a_registry_copies_to_a_bucket_and_back_keeping_numbers_and_pointers() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    std::fs::write(&model, b"model").unwrap();
    let tokenizer = dir.path().join("tokenizer.json");
    std::fs::write(&tokenizer, b"{}").unwrap();
    let local = Registry::new(dir.path().join("models"));
    local
        .publish(&model, manifest("m"), &[&tokenizer], false)
        .unwrap();
    local.publish(&model, manifest("m"), &[], true).unwrap();
    local.publish(&model, manifest("n"), &[], true).unwrap();
    assert_eq!(local.models().unwrap(), ["m", "n"]);

    let bucket = in_memory();
    let report = local.copy_to(&bucket, &[]).unwrap();
    assert_eq!(report.copied, ["m/1", "m/2", "n/1"]);
    assert_eq!(report.pointed, ["m/2", "n/1"]);
    assert_eq!(bucket.models().unwrap(), ["m", "n"]);
    assert_eq!(bucket.current("m").unwrap().version, "2");
    let first = bucket.current("m").and_then(|_| {
        let v = bucket.version("m", "1");
        bucket.manifest(&v).map(|_| v)
    });
    assert!(first.unwrap().dir.join("tokenizer.json").is_file());
    // Again: nothing new to copy; the target's own pointer is left alone.
    bucket.set_current("m", "1").unwrap();
    let again = local.copy_to(&bucket, &["m".into()]).unwrap();
    assert!(
        again.copied.is_empty() && again.pointed.is_empty(),
        "{again:?}"
    );
    assert_eq!(again.present, ["m/1", "m/2"]);
    assert_eq!(bucket.current("m").unwrap().version, "1");

    let back = Registry::new(dir.path().join("back"));
    bucket.copy_to(&back, &[]).unwrap();
    assert_eq!(back.current("m").unwrap().version, "1");
    assert_eq!(back.versions("n").unwrap().len(), 1);
}

#[test]
fn promote_and_rollback_move_the_pointer_between_published_versions() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    std::fs::write(&model, b"model").unwrap();
    for registry in [Registry::new(dir.path().join("local")), in_memory()] {
        for _ in 0..3 {
            registry.publish(&model, manifest("m"), &[], true).unwrap();
        }
        assert_eq!(registry.current("m").unwrap().version, "3");
        assert_eq!(registry.rollback("m").unwrap(), ("3".into(), "2".into()));
        assert_eq!(registry.promote("m", "1").unwrap().as_deref(), Some("2"));
        let err = registry.rollback("m").unwrap_err().to_string();
        assert!(err.contains("no published version before 1"), "{err}");
        assert!(registry.promote("m", "9").is_err(), "not published");
        assert_eq!(registry.current("m").unwrap().version, "1");
    }
}

#[test]
fn a_missing_pointer_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let err = Registry::new(dir.path()).current("nope").unwrap_err();
    assert!(err.to_string().contains("scripts/setup.sh"), "{err}");
}
