//! A Python helper process the tests drive line by line (the confluent-kafka producers):
//! each command is one line on its stdin, answered by `ok` on its stdout; killed when
//! dropped.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

pub struct Script {
    name: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Script {
    /// Starts `python3 SCRIPT ARGS...`.
    pub fn start(script: &str, args: &[&str]) -> Script {
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Script {
            name: script.to_owned(),
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command and waits for its `ok`.
    pub fn run(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        assert_eq!(
            answer.trim(),
            "ok",
            "{} failed on `{command}` (its stderr is above)",
            self.name
        );
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
