//! The deployment files in `deploy/` cannot run here (no Docker engine, no cluster), so this
//! checks what can be checked offline: every YAML document parses; every sluice command
//! they run is a real subcommand with real flags, on pipeline and job files that exist and
//! validate; the files the Dockerfiles copy exist; the ConfigMap carries the repository's
//! pipeline file unchanged; the compose file's topics, brokers and ports agree with the
//! pipeline; the Kubernetes ports, probes, labels and volumes refer to each other; data and
//! models are in one bucket everywhere (no shared volumes), and the KEDA scaler watches the
//! pipeline's own consumer group.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

use sluice::config::{SinkConfig, SourceConfig};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The repository file an image path stands for (`/etc/sluice/X` is `pipelines/X`).
fn in_repo(image_path: &str) -> Option<PathBuf> {
    image_path
        .strip_prefix("/etc/sluice/")
        .map(|rest| repo("pipelines").join(rest))
}

/// Runs `sluice ARGS --help`: clap rejects an unknown subcommand or flag before it prints
/// help. Pipeline and job files named in the arguments must exist and validate.
fn check_sluice_command(args: &[String], context: &str) {
    let mut checked = Vec::new();
    for arg in args {
        if let Some(file) = in_repo(arg) {
            assert!(file.is_file(), "{context}: {arg} is not in pipelines/");
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("retrain-") {
                sluice::pipeline::job::load(&file, &|v| std::env::var(v).ok())
                    .unwrap_or_else(|e| panic!("{context}: {e}"));
            } else {
                sluice::pipeline::load(&file).unwrap_or_else(|e| panic!("{context}: {e}"));
            }
            checked.push(file.display().to_string());
        } else {
            // Kubernetes substitutes `$(VAR)` from the pod's environment; an indexed Job's
            // first pod has JOB_COMPLETION_INDEX 0.
            checked.push(arg.replace("$(JOB_COMPLETION_INDEX)", "0"));
        }
    }
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(&checked)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{context}: `sluice {}` is not a valid command: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_owned))
}

fn port_of(listen: &str) -> u64 {
    listen.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn every_yaml_document_parses_and_every_sluice_command_is_real() {
    let files = yaml_files(&repo("deploy"));
    assert!(files.len() >= 6, "{files:?}");
    for file in files {
        for doc in documents(&file) {
            let context = file.display().to_string();
            let pod = match doc["kind"].as_str() {
                Some("Deployment") | Some("Job") => &doc["spec"]["template"]["spec"],
                Some("CronJob") => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                _ => continue,
            };
            for container in pod["containers"].as_array().unwrap() {
                let image = container["image"].as_str().unwrap();
                assert!(image.starts_with("sluice"), "{context}: image {image}");
                check_sluice_command(&strings(&container["args"]), &context);
                let mounts = container["volumeMounts"].as_array().unwrap();
                let volumes = pod["volumes"].as_array().unwrap();
                for mount in mounts {
                    assert!(
                        volumes.iter().any(|v| v["name"] == mount["name"]),
                        "{context}: volume {} is mounted but not defined",
                        mount["name"]
                    );
                }
            }
        }
    }
}

#[test]
fn the_dockerfiles_copy_files_that_exist_and_run_real_commands() {
    for name in ["Dockerfile", "Dockerfile.cuda"] {
        let path = repo("deploy").join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() == Some(&"COPY") && !words[1].starts_with("--from") {
                for source in &words[1..words.len() - 1] {
                    assert!(
                        repo(source).exists(),
                        "{name}: COPY {source} does not exist"
                    );
                }
            }
            for word in &words {
                let word = word.trim_end_matches(['\\', ';']);
                if word.starts_with("scripts/") {
                    assert!(repo(word).is_file(), "{name}: {word} does not exist");
                }
            }
            if let Some(cmd) = line.strip_prefix("CMD ") {
                let args: Vec<String> = serde_json::from_str(cmd).unwrap();
                check_sluice_command(&args, name);
            }
        }
        assert!(text.contains("ENTRYPOINT [\"sluice\"]"), "{name}");
    }
    let cuda = std::fs::read_to_string(repo("deploy/Dockerfile.cuda")).unwrap();
    assert!(cuda.contains("fetch_assets.py --gpu"));
    assert!(cuda.contains("onnxruntime-gpu/lib"));
}

#[test]
fn the_backfill_job_splits_the_partitions_by_completion_index() {
    let job = &documents(&repo("deploy/k8s/backfill-job.yaml"))[0];
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    let completions = job["spec"]["completions"].as_u64().unwrap();
    let args = strings(&job["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert_eq!(args[0], "backfill");
    let shard = &args[args.iter().position(|a| a == "--shard").unwrap() + 1];
    assert_eq!(shard, &format!("$(JOB_COMPLETION_INDEX)/{completions}"));
    for index in 0..completions {
        sluice::backfill::parse_shard(
            &shard.replace("$(JOB_COMPLETION_INDEX)", &index.to_string()),
        )
        .unwrap();
    }
}

#[test]
fn the_configmap_carries_the_repository_pipeline_unchanged() {
    let docs = documents(&repo("deploy/k8s/configmap.yaml"));
    let data = &docs[0]["data"];
    let pipeline = std::fs::read_to_string(repo("pipelines/sentiment.yaml")).unwrap();
    assert_eq!(
        data["sentiment.yaml"].as_str().unwrap(),
        pipeline,
        "deploy/k8s/configmap.yaml is out of date with pipelines/sentiment.yaml"
    );
}

#[test]
fn the_kubernetes_ports_probes_and_labels_line_up() {
    let service_docs = documents(&repo("deploy/k8s/service.yaml"));
    let service = service_docs
        .iter()
        .find(|d| d["kind"] == "Service")
        .unwrap();
    let monitor = service_docs
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .unwrap();
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service_port["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    for file in [
        "deploy/k8s/deployment.yaml",
        "deploy/k8s/deployment-gpu.yaml",
    ] {
        let docs = documents(&repo(file));
        let spec = &docs[0]["spec"];
        let labels = spec["template"]["metadata"]["labels"].as_object().unwrap();
        for (key, value) in service["spec"]["selector"].as_object().unwrap() {
            assert_eq!(
                labels.get(key),
                Some(value),
                "{file}: not selected by the Service"
            );
        }
        assert_eq!(
            spec["selector"]["matchLabels"].as_object().unwrap().len(),
            2
        );
        let container = &spec["template"]["spec"]["containers"][0];
        let listen = env_value(container, "SLUICE_METRICS_LISTEN").unwrap();
        let port = &container["ports"][0];
        assert_eq!(
            port["containerPort"].as_u64(),
            Some(port_of(&listen)),
            "{file}"
        );
        assert_eq!(port["name"], service_port["targetPort"], "{file}");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/health");
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], port["name"]);
        let config_mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "pipelines")
            .unwrap();
        assert_eq!(
            config_mount["mountPath"].as_str(),
            strings(&container["args"]).last().map(String::as_str)
        );
    }
    let gpu = &documents(&repo("deploy/k8s/deployment-gpu.yaml"))[0]["spec"]["template"]["spec"]
        ["containers"][0];
    assert_eq!(gpu["resources"]["limits"]["nvidia.com/gpu"], 1);
    assert_eq!(env_value(gpu, "SLUICE_DEVICE").as_deref(), Some("cuda"));
}

#[test]
fn the_compose_file_matches_the_pipeline_it_runs() {
    let compose = &documents(&repo("deploy/docker-compose.yml"))[0];
    let services = &compose["services"];
    let kafka_env = &services["kafka"]["environment"];
    assert_eq!(
        kafka_env["KAFKA_PROCESS_ROLES"], "broker,controller",
        "KRaft mode"
    );
    let advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"].as_str().unwrap();
    let broker = advertised.split("//").nth(1).unwrap();

    let sluice = &services["sluice"];
    let args = strings(&sluice["command"]);
    check_sluice_command(&args, "docker-compose.yml sluice");
    let env = &sluice["environment"];
    assert_eq!(env["SLUICE_BROKERS"].as_str(), Some(broker));
    let listen = env["SLUICE_METRICS_LISTEN"].as_str().unwrap();
    let published = strings(&sluice["ports"]);
    assert!(
        published.contains(&format!("{0}:{0}", port_of(listen))),
        "metrics port {listen} not published: {published:?}"
    );

    let pipeline = sluice::pipeline::load(&in_repo(args.last().unwrap()).unwrap()).unwrap();
    let SourceConfig::Kafka(source) = &pipeline.config.source;
    let mut needed: Vec<String> = source.topics.clone();
    for sink in &pipeline.config.sinks {
        if let SinkConfig::Kafka(out) = sink {
            needed.push(out.topic.clone());
        }
    }
    if let Some(dlq) = &pipeline.config.dead_letter.kafka {
        needed.push(dlq.topic.clone());
    }
    let create = strings(&services["topics"]["command"]).join("\n");
    for topic in &needed {
        assert!(
            create.contains(&format!("{topic}:")),
            "topic {topic} of the pipeline is not created by the compose file"
        );
    }

    let generator = strings(&services["generator"]["command"]);
    check_sluice_command(&generator, "docker-compose.yml generator");
    let topic_at = generator.iter().position(|a| a == "--topic").unwrap();
    assert_eq!(generator[topic_at + 1], source.topics[0]);
    assert_eq!(
        services["generator"]["environment"]["SLUICE_BROKERS"].as_str(),
        Some(broker)
    );
}

/// The RUN instructions of a Dockerfile, continuation lines joined.
fn run_instructions(text: &str) -> Vec<String> {
    let mut runs = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(open) = current.as_mut() {
            open.push(' ');
            open.push_str(line.trim_end_matches('\\'));
        } else if let Some(rest) = line.strip_prefix("RUN ") {
            current = Some(rest.trim_end_matches('\\').to_owned());
        }
        if !line.ends_with('\\') {
            runs.extend(current.take());
        }
    }
    runs
}

#[test]
fn the_runtime_images_carry_what_tls_and_sasl_need_and_validate_a_secured_pipeline() {
    for name in ["Dockerfile", "Dockerfile.cuda"] {
        let text = std::fs::read_to_string(repo("deploy").join(name)).unwrap();
        let runs = run_instructions(&text);
        let runtime = runs
            .iter()
            .rev()
            .find(|r| r.contains("apt-get install"))
            .unwrap();
        for library in [
            "ca-certificates",
            "libssl3",
            "libsasl2-2",
            "libcurl4",
            "libzstd1",
        ] {
            assert!(
                runtime.contains(library),
                "{name}: runtime image lacks {library}"
            );
        }
        // What the image runs at build time, run here on the same file.
        let check = runs
            .iter()
            .find(|r| r.contains("sluice validate"))
            .unwrap_or_else(|| panic!("{name}: no `sluice validate` of a secured pipeline"));
        let words: Vec<&str> = check.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "sluice").unwrap();
        let env: Vec<(&str, &str)> = words[..at]
            .iter()
            .filter_map(|w| w.split_once('='))
            .collect();
        assert!(
            env.contains(&("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")),
            "{name}: {check}"
        );
        assert!(env
            .iter()
            .any(|(k, v)| *k == "KAFKA_SASL_MECHANISM" && v.starts_with("SCRAM")));
        let file = words[at + 2].replace("/etc/sluice/", "pipelines/");
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(&words[at + 1..at + 2])
            .arg(repo(&file))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{name}: {check}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The pod spec and first container of every workload in `deploy/k8s`, by file.
fn workloads() -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for file in yaml_files(&repo("deploy/k8s")) {
        for doc in documents(&file) {
            let pod = match doc["kind"].as_str() {
                Some("Deployment") | Some("Job") => doc["spec"]["template"]["spec"].clone(),
                Some("CronJob") => doc["spec"]["jobTemplate"]["spec"]["template"]["spec"].clone(),
                _ => continue,
            };
            found.push((file.display().to_string(), pod));
        }
    }
    found
}

/// `s3://BUCKET/...` -> `BUCKET`.
fn bucket(url: &str) -> &str {
    let rest = url
        .strip_prefix("s3://")
        .unwrap_or_else(|| panic!("{url} is not an s3:// URL"));
    rest.split('/').next().unwrap()
}

#[test]
fn data_and_models_live_in_one_bucket_and_no_pod_needs_a_shared_volume() {
    let secret = &documents(&repo("deploy/k8s/s3-secret.yaml"))[0];
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert!(
            secret["stringData"][key].is_string(),
            "s3-secret.yaml: {key}"
        );
    }
    let secret_name = secret["metadata"]["name"].as_str().unwrap();
    let mut buckets = Vec::new();
    let workloads = workloads();
    assert!(workloads.len() >= 5, "{workloads:?}");
    for (file, pod) in &workloads {
        for volume in pod["volumes"].as_array().into_iter().flatten() {
            assert!(
                volume["persistentVolumeClaim"].is_null(),
                "{file}: volume {} is a claim",
                volume["name"]
            );
        }
        let container = &pod["containers"][0];
        let env_from = container["envFrom"].as_array().cloned().unwrap_or_default();
        assert!(
            env_from
                .iter()
                .any(|e| e["secretRef"]["name"] == secret_name),
            "{file}: the S3 credentials are not in the environment"
        );
        for name in ["SLUICE_OUT", "SLUICE_MODELS"] {
            if let Some(url) = env_value(container, name) {
                buckets.push((file.clone(), bucket(&url).to_owned()));
            }
        }
        let args = strings(&container["args"]);
        for (i, arg) in args.iter().enumerate() {
            if arg == "--out" || (i > 0 && args[0] == "models" && arg.starts_with("s3://")) {
                let url = if arg == "--out" { &args[i + 1] } else { arg };
                buckets.push((file.clone(), bucket(url).to_owned()));
            }
        }
    }
    let first = &buckets[0].1;
    assert!(buckets.iter().all(|(_, b)| b == first), "{buckets:?}");
    // The seed job fills the registry the Deployment reads.
    let deployment = &documents(&repo("deploy/k8s/deployment.yaml"))[0];
    let models = env_value(
        &deployment["spec"]["template"]["spec"]["containers"][0],
        "SLUICE_MODELS",
    )
    .unwrap();
    let seed = &documents(&repo("deploy/k8s/models-seed-job.yaml"))[0];
    let seed_args = strings(&seed["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert_eq!(seed_args[..2], ["models", "copy"]);
    assert_eq!(seed_args.last(), Some(&models));
}

#[test]
fn the_keda_scaler_watches_the_pipeline_s_group_and_topic() {
    let docs = documents(&repo("deploy/k8s/keda-scaledobject.yaml"));
    let scaled = docs.iter().find(|d| d["kind"] == "ScaledObject").unwrap();
    let auth = docs
        .iter()
        .find(|d| d["kind"] == "TriggerAuthentication")
        .unwrap();
    let deployment = &documents(&repo("deploy/k8s/deployment.yaml"))[0];
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "kafka");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let pipeline =
        sluice::pipeline::load(&in_repo(strings(&container["args"]).last().unwrap()).unwrap())
            .unwrap();
    let SourceConfig::Kafka(source) = &pipeline.config.source;
    let meta = &trigger["metadata"];
    assert_eq!(
        meta["consumerGroup"].as_str(),
        Some(pipeline.group_id().as_str())
    );
    assert!(source.topics.iter().any(|t| meta["topic"] == t.as_str()));
    assert_eq!(
        meta["bootstrapServers"].as_str(),
        env_value(container, "SLUICE_BROKERS").as_deref()
    );
    assert!(
        meta["lagThreshold"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    // No more replicas than the topic has partitions (as the compose file creates it).
    let compose = &documents(&repo("deploy/docker-compose.yml"))[0];
    let create = strings(&compose["services"]["topics"]["command"]).join("\n");
    let topic = meta["topic"].as_str().unwrap();
    let partitions: u64 = create
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{topic}:")))
        .unwrap()
        .parse()
        .unwrap();
    let max = scaled["spec"]["maxReplicaCount"].as_u64().unwrap();
    assert!(
        max >= 1 && max <= partitions,
        "{max} replicas, {partitions} partitions"
    );
    assert_eq!(
        trigger["authenticationRef"]["name"],
        auth["metadata"]["name"]
    );
    let kafka_secret = &documents(&repo("deploy/k8s/kafka-secret.yaml"))[0];
    for target in auth["spec"]["secretTargetRef"].as_array().unwrap() {
        assert_eq!(target["name"], kafka_secret["metadata"]["name"]);
        let key = target["key"].as_str().unwrap();
        assert!(
            kafka_secret["stringData"][key].is_string(),
            "no {key} in the secret"
        );
    }
}

#[test]
fn the_compose_file_keeps_data_and_models_in_its_object_store() {
    let compose = &documents(&repo("deploy/docker-compose.yml"))[0];
    let services = &compose["services"];
    let store = strings(&services["s3"]["command"]);
    let made = store
        .iter()
        .find_map(|a| a.strip_prefix("-bucket="))
        .expect("the store makes the bucket");
    let sluice = &services["sluice"];
    assert!(sluice["volumes"].is_null(), "no shared volume");
    let env = &sluice["environment"];
    for name in ["SLUICE_OUT", "SLUICE_MODELS"] {
        assert_eq!(bucket(env[name].as_str().unwrap()), made, "{name}");
    }
    let seed = &services["models-seed"];
    check_sluice_command(&strings(&seed["command"]), "docker-compose.yml models-seed");
    assert_eq!(
        strings(&seed["command"]).last().map(String::as_str),
        env["SLUICE_MODELS"].as_str()
    );
    assert_eq!(
        sluice["depends_on"]["models-seed"]["condition"],
        "service_completed_successfully"
    );
    let identities = compose["configs"]["s3-identities"]["content"]
        .as_str()
        .unwrap();
    for service in [sluice, seed] {
        let env = &service["environment"];
        assert!(env["AWS_ENDPOINT_URL"]
            .as_str()
            .unwrap()
            .starts_with("http://s3:"));
        for (name, in_store) in [
            ("AWS_ACCESS_KEY_ID", "accessKey"),
            ("AWS_SECRET_ACCESS_KEY", "secretKey"),
        ] {
            let value = env[name].as_str().unwrap();
            assert!(
                identities.contains(&format!("\"{in_store}\": \"{value}\"")),
                "{name} {value} is not the store's identity"
            );
        }
    }
}
