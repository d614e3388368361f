//! The three instances behind a real load balancer: Debian's nginx with the shipped
//! `deploy/nginx/cluster.conf` (round robin, no stickiness), and a client that knows nothing
//! of instances.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use awc::http::Method;
use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::cluster::{ADMIN, Cluster, Spec, Sse, request};

const NGINX: &str = "/usr/sbin/nginx";

/// nginx in the foreground on a free port, its files in `dir`; killed on drop.
struct Nginx {
    child: Child,
    url: String,
    dir: std::path::PathBuf,
}

impl Nginx {
    /// `deploy/nginx/cluster.conf` with the instances' addresses and a free port.
    async fn start(dir: &Path, upstreams: &[&str]) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: the load-balancer test needs Debian's nginx (scripts/test installs it: apt-get install nginx)"
        );
        let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/cluster.conf"))
            .expect("deploy/nginx/cluster.conf");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut site = shipped.replace("listen 8000;", &format!("listen 127.0.0.1:{port};"));
        for (name, addr) in ["instance-a:8000", "instance-b:8000", "instance-c:8000"].iter().zip(upstreams) {
            assert!(site.contains(name), "deploy/nginx/cluster.conf names {name}");
            site = site.replace(name, addr);
        }
        assert!(site.contains(&format!("listen 127.0.0.1:{port};")), "deploy/nginx/cluster.conf listens on 8000");
        let d = dir.display();
        std::fs::write(dir.join("site.conf"), site).unwrap();
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             include {d}/site.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let mut child = Command::new(NGINX)
            .args(["-p", &d.to_string(), "-e", &format!("{d}/error.log"), "-c", &format!("{d}/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{NGINX}: {e}"));
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "nginx exited ({status}): {}",
                    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
            }
            assert!(started.elapsed() < Duration::from_secs(10), "nginx did not listen within 10 s");
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        Nginx { child, url: format!("http://127.0.0.1:{port}"), dir: dir.to_path_buf() }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Through nginx round robin over A, B and C, 10 sessions × 10 turns (sync and streamed, in
/// parallel): every answer right, the sessions spread over the three instances, one CLI each.
#[actix_web::test]
async fn behind_nginx_a_client_runs_10_sessions_of_10_turns_with_no_error() {
    let c = Cluster::start(Spec::fake()).await;
    let ups: Vec<String> = c.nodes.iter().map(|n| n.url.trim_start_matches("http://").to_string()).collect();
    let lb_dir = c.root.path().join("nginx");
    std::fs::create_dir_all(&lb_dir).unwrap();
    let lb = Nginx::start(&lb_dir, &ups.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let client = &c.client;
    let lb_url = lb.url.clone();
    let call = async |method: Method, path: &str, key: &str, body: Option<Value>| {
        request(client, &format!("{lb_url}{path}"), method, Some(key), body).await
    };

    let user = call(Method::POST, "/api/v1/users", ADMIN, Some(json!({"user_id": "alice"}))).await;
    assert_eq!(user.status, 201, "{}", user.text);
    let key = user.body["api_key"].as_str().unwrap().to_string();
    let mut ids = Vec::new();
    for _ in 0..10 {
        let s = call(Method::POST, "/api/v1/sessions", &key, Some(json!({}))).await;
        assert_eq!(s.status, 201, "{}", s.text);
        ids.push(s.body["session_id"].as_str().unwrap().to_string());
    }

    let session = async |id: String| -> Vec<String> {
        let mut errors = Vec::new();
        for turn in 0..10 {
            let message = format!("turn {turn} of {id}");
            let expected = format!("echo: {message}");
            if turn % 2 == 0 {
                let res =
                    call(Method::POST, "/api/v1/chat", &key, Some(json!({"session_id": id, "message": message}))).await;
                if res.status != 200 || res.body["text"] != expected.as_str() {
                    errors.push(format!("{id} turn {turn}: {} {}", res.status, res.text));
                }
            } else {
                let url = format!("{lb_url}/api/v1/chat/stream");
                let body = json!({"session_id": id, "message": message});
                let mut sse = Sse::open(client, &url, Method::POST, &key, None, Some(body)).await;
                let frames = sse.until_done().await;
                let done = &frames.last().unwrap().1;
                if done["type"] != "done" || done["result"]["text"] != expected.as_str() {
                    errors.push(format!("{id} turn {turn}: {frames:?}"));
                }
            }
        }
        let got = call(Method::GET, &format!("/api/v1/sessions/{id}"), &key, None).await;
        if got.body["message_count"] != 10 {
            errors.push(format!("{id}: {}", got.text));
        }
        errors
    };
    let errors: Vec<String> = join_all(ids.iter().cloned().map(session)).await.concat();
    assert!(errors.is_empty(), "no error through the load balancer: {errors:#?}\nnginx: {}", lb.error_log());

    let owners = c.db("SELECT DISTINCT owner_instance FROM sessions WHERE owner_instance IS NOT NULL").await;
    assert_eq!(owners.len(), 3, "round robin spread the sessions over the three instances: {owners:?}");
    for id in &ids {
        let cli_id = c.row(id).await["cli_session_id"].as_str().unwrap().to_string();
        let clis = c.cli_processes(&cli_id);
        assert_eq!(clis.len(), 1, "session {id}: one CLI in the cluster: {clis:?}");
    }
    let forwarded: u64 = join_all((0..3).map(|i| c.health(i)))
        .await
        .iter()
        .map(|h| h["cluster"]["forwarded_requests"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        forwarded >= 40,
        "about two thirds of the 110 requests reached a non-owner and were forwarded: {forwarded}"
    );
}
