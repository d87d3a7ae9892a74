//! nginx (Debian's package; `make test-remote` unpacks it when none is installed, and names it
//! in FLASHPACK_NGINX) serving a new temporary folder on 127.0.0.1, a free port.
use std::time::{Duration, Instant};

/// nginx serving a new temporary folder on a free port; stopped when dropped.
pub struct Nginx {
    pub port: u16,
    child: std::process::Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn nginx() -> (tempfile::TempDir, Nginx) {
    let bin = std::env::var("FLASHPACK_NGINX")
        .ok()
        .into_iter()
        .chain(["/usr/sbin/nginx".to_string(), "/usr/bin/nginx".to_string()])
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "nginx not found: `make test-remote` unpacks Debian's nginx-light (FLASHPACK_NGINX)",
        );
    let dir = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap().keep();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = run.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; pid {run}/nginx.pid; error_log {run}/error.log;\n\
             events {{}}\n\
             http {{ access_log off; client_body_temp_path {run}; proxy_temp_path {run};\n\
               fastcgi_temp_path {run}; uwsgi_temp_path {run}; scgi_temp_path {run};\n\
               server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
            run = run.display(),
            root = dir.path().display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(bin)
        .args([
            "-p",
            &run.display().to_string(),
            "-c",
            &conf.display().to_string(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start nginx");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "nginx did not start (see {})",
            run.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (dir, Nginx { port, child })
}
