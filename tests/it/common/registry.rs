//! A Confluent-compatible schema registry on a free loopback port: the REST subset the
//! Confluent clients use (register a schema under a subject, schemas by id, a subject's
//! versions, compatibility checks), served from memory. No registry installs from the
//! package registries here, so the tests run this and talk to it with the real clients
//! (confluent-kafka's `SchemaRegistryClient` and serializers; sluice's decoder).
//!
//! [`Registry::set_available`] makes every request answer 503, as a registry that is down
//! behind its load balancer does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

#[derive(Default)]
struct State {
    /// Schema text and type by id (ids from 1).
    schemas: Vec<(String, String)>,
    /// Subject -> ids of its versions, oldest first.
    subjects: std::collections::BTreeMap<String, Vec<usize>>,
}

/// A registry; stops serving when dropped.
pub struct Registry {
    pub url: String,
    state: Arc<Mutex<State>>,
    available: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl Registry {
    pub fn start() -> Registry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let available = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (state, available, stop) = (state.clone(), available.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (state, available) = (state.clone(), available.clone());
                    std::thread::spawn(move || serve(stream, &state, &available));
                }
            });
        }
        Registry {
            url: format!("http://127.0.0.1:{port}"),
            state,
            available,
            stop,
            port,
        }
    }

    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
    }

    /// Registers `schema` (Avro) under `subject` directly; returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        register(&mut self.state.lock().unwrap(), subject, schema, "AVRO")
    }

    /// How many schemas are registered.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap().schemas.len()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn register(state: &mut State, subject: &str, schema: &str, kind: &str) -> u32 {
    let id = match state
        .schemas
        .iter()
        .position(|(s, k)| s == schema && k == kind)
    {
        Some(at) => at + 1,
        None => {
            state.schemas.push((schema.to_owned(), kind.to_owned()));
            state.schemas.len()
        }
    };
    let versions = state.subjects.entry(subject.to_owned()).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    id as u32
}

/// One request per connection (`Connection: close`), as HTTP/1.1 allows.
fn serve(stream: TcpStream, state: &Mutex<State>, available: &AtomicBool) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, answer) = if available.load(Ordering::SeqCst) {
        route(method, path, &body, &mut state.lock().unwrap())
    } else {
        (
            503,
            json!({"error_code": 50301, "message": "registry is down"}),
        )
    };
    let text = answer.to_string();
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        _ => "Service Unavailable",
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

fn route(method: &str, path: &str, body: &[u8], state: &mut State) -> (u16, Value) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let not_found =
        |code: u32, message: &str| (404, json!({"error_code": code, "message": message}));
    let schema_json = |id: usize, state: &State| {
        let (schema, kind) = &state.schemas[id - 1];
        let mut answer = json!({"schema": schema, "id": id});
        if kind != "AVRO" {
            answer["schemaType"] = json!(kind);
        }
        answer
    };
    match (method, segments.as_slice()) {
        ("GET", ["schemas", "ids", id]) => match id.parse::<usize>() {
            Ok(id) if id >= 1 && id <= state.schemas.len() => (200, schema_json(id, state)),
            _ => not_found(40403, "Schema not found"),
        },
        ("GET", ["subjects"]) => (200, json!(state.subjects.keys().collect::<Vec<_>>())),
        ("POST", ["subjects", subject, "versions"]) | ("POST", ["subjects", subject]) => {
            let Ok(request) = serde_json::from_slice::<Value>(body) else {
                return (
                    422,
                    json!({"error_code": 42201, "message": "invalid schema"}),
                );
            };
            let schema = request["schema"].as_str().unwrap_or_default();
            let kind = request["schemaType"].as_str().unwrap_or("AVRO");
            let registering = segments.len() == 3;
            if !registering {
                // Lookup: is this schema registered under the subject?
                let found = state.subjects.get(*subject).and_then(|ids| {
                    ids.iter()
                        .enumerate()
                        .find(|(_, id)| state.schemas[**id - 1].0 == schema)
                });
                return match found {
                    Some((version, id)) => {
                        let mut answer = schema_json(*id, state);
                        answer["subject"] = json!(subject);
                        answer["version"] = json!(version + 1);
                        (200, answer)
                    }
                    None => not_found(40403, "Schema not found"),
                };
            }
            let id = register(state, subject, schema, kind);
            (200, json!({"id": id}))
        }
        ("GET", ["subjects", subject, "versions"]) => match state.subjects.get(*subject) {
            Some(ids) => (200, json!((1..=ids.len()).collect::<Vec<_>>())),
            None => not_found(40401, "Subject not found"),
        },
        ("GET", ["subjects", subject, "versions", version]) => {
            let Some(ids) = state.subjects.get(*subject) else {
                return not_found(40401, "Subject not found");
            };
            let index = match *version {
                "latest" => ids.len(),
                n => n.parse().unwrap_or(0),
            };
            match index.checked_sub(1).and_then(|i| ids.get(i)) {
                Some(id) => {
                    let mut answer = schema_json(*id, state);
                    answer["subject"] = json!(subject);
                    answer["version"] = json!(index);
                    (200, answer)
                }
                None => not_found(40402, "Version not found"),
            }
        }
        ("POST", ["compatibility", "subjects", _, "versions", _]) => {
            (200, json!({"is_compatible": true}))
        }
        _ => not_found(404, "no such endpoint"),
    }
}
