//! A throwaway S3-compatible server for one test: moto (from PyPI,
//! installed under `target/moto-venv` by `scripts/moto-deps`, which the
//! test command runs first) on a loopback port, killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running moto server.
pub struct Moto {
    child: Child,
    /// `127.0.0.1:<port>`.
    address: String,
}

impl Moto {
    /// Starts a server on a port the system picks.
    pub fn start() -> Moto {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .find(|dir| dir.join("scripts/moto-deps").is_file())
            .expect("the repository's scripts/moto-deps");
        let server = root.join("target/moto-venv/bin/moto_server");
        assert!(
            server.is_file(),
            "{} is missing: run scripts/moto-deps (the test command does)",
            server.display()
        );
        let mut child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server starts");
        // It says where it listens once it does; its log is drained from
        // then on, so it never blocks on a full pipe.
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.split("Running on http://").nth(1) {
                    let _ = tx.send(at.trim().to_string());
                }
            }
        });
        let address = match rx.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                panic!("moto_server did not say where it listens within 120 s");
            }
        };
        Moto { child, address }
    }

    /// The server's URL, for `endpoint=`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Makes the bucket `name`; answers the `--blob-store` URL of objects
    /// under `kiln/` in it, with `options` added to the query.
    pub fn bucket(&self, name: &str, options: &str) -> String {
        let (status, body) = self.request("PUT", &format!("/{name}"));
        assert!(status == 200, "creating the bucket {name}: {status} {body}");
        format!(
            "s3://{name}/kiln/?endpoint={}{}{options}",
            self.endpoint(),
            if options.is_empty() { "" } else { "&" }
        )
    }

    /// The name and size of every object in `bucket`.
    pub fn objects(&self, bucket: &str) -> Vec<(String, u64)> {
        let mut objects = Vec::new();
        let mut after = String::new();
        loop {
            let (status, body) =
                self.request("GET", &format!("/{bucket}?list-type=2&start-after={after}"));
            assert!(status == 200, "listing {bucket}: {status} {body}");
            let field = |item: &str, tag: &str| -> String {
                let open = format!("<{tag}>");
                let start = item.find(&open).map(|i| i + open.len()).unwrap_or(0);
                let end = item[start..].find('<').map_or(item.len(), |i| i + start);
                item[start..end].to_string()
            };
            let page: Vec<(String, u64)> = body
                .split("<Contents>")
                .skip(1)
                .map(|item| (field(item, "Key"), field(item, "Size").parse().unwrap_or(0)))
                .collect();
            let truncated = body.contains("<IsTruncated>true</IsTruncated>");
            objects.extend(page);
            match objects.last() {
                Some((last, _)) if truncated => after = last.clone(),
                _ => return objects,
            }
        }
    }

    /// Writes an object at `path` (`<bucket>/<name>`) behind Kiln's back.
    pub fn put(&self, path: &str, body: &[u8]) {
        let (status, answer) = self.send("PUT", &format!("/{path}"), body);
        assert!(status == 200, "writing {path}: {status} {answer}");
    }

    /// Deletes an object at `path` (`<bucket>/<name>`) behind Kiln's back.
    pub fn delete(&self, path: &str) {
        let (status, answer) = self.send("DELETE", &format!("/{path}"), b"");
        assert!(
            status == 204 || status == 200,
            "deleting {path}: {status} {answer}"
        );
    }

    /// Sends a request with a signature moto does not check (it refuses
    /// some requests with none at all).
    fn request(&self, method: &str, path: &str) -> (u16, String) {
        self.send(method, path, b"")
    }

    fn send(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let mut stream =
            std::net::TcpStream::connect(&self.address).expect("connecting to moto_server");
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Length: {}\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=kiln/20260101/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature=00\r\n\r\n",
            self.address,
            body.len()
        )
        .expect("sending a request to moto_server");
        stream
            .write_all(body)
            .expect("sending a body to moto_server");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("moto_server answers");
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
