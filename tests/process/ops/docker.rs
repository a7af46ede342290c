//! The Docker files, checked with what runs without a Docker engine:
//! docker-compose validates compose.yaml, the gateway's config for the
//! container passes `--check-config`, and the README's `docker build` /
//! `docker run` commands agree with the Dockerfile.

use std::collections::BTreeSet;
use std::process::Command;

use super::{read, repo};
use crate::common::service;

#[test]
fn compose_file_is_valid_and_has_every_service() {
    if !service::program(
        "docker-compose",
        "docker-compose (Debian's docker-compose package)",
    ) {
        return;
    }
    let run = |args: &[&str]| {
        let out = Command::new("docker-compose")
            .args(["-f", "docker/compose.yaml"])
            .args(args)
            .current_dir(repo(""))
            .output()
            .expect("run docker-compose");
        assert!(
            out.status.success(),
            "docker-compose {args:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["config", "-q"]);
    let services: BTreeSet<String> = run(&["config", "--services"])
        .lines()
        .map(str::to_owned)
        .collect();
    let want: BTreeSet<String> = ["grafana", "kafka", "mqbridge", "prometheus", "rabbitmq"]
        .map(str::to_owned)
        .into();
    assert_eq!(services, want);
    let compose = read("docker/compose.yaml");
    for mount in [
        "./prometheus:/etc/prometheus",
        "../grafana/provisioning:/etc/grafana/provisioning",
        "../grafana/dashboards:/etc/grafana/dashboards",
        "./mqbridge.toml:/etc/mqbridge/mqbridge.toml",
        "dockerfile: docker/Dockerfile",
        "KAFKA_PROCESS_ROLES: broker,controller",
    ] {
        assert!(compose.contains(mount), "compose.yaml lacks {mount}");
    }
    assert!(
        read("grafana/provisioning/dashboards/mqbridge.yml")
            .contains("path: /etc/grafana/dashboards"),
        "dashboard provider path must match the compose mount"
    );
}

#[test]
fn container_config_is_valid_and_listens_where_the_image_exposes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = crate::mqbridge_command();
    let out = cmd
        .args(["--check-config", "--config"])
        .arg(repo("docker/mqbridge.toml"))
        .env_remove("RUST_LOG")
        .current_dir(dir.path())
        .output()
        .expect("run mqbridge");
    assert!(
        out.status.success(),
        "docker/mqbridge.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = read("docker/mqbridge.toml");
    let exposed = exposed_ports();
    assert!(
        toml.contains("listen = \"0.0.0.0:9883\""),
        "admin must listen on every interface in a container"
    );
    assert!(toml.contains("listen = \"0.0.0.0:1883\""));
    assert!(
        toml.contains("path = \"/var/lib/mqbridge/store\""),
        "store on the image's volume"
    );
    assert_eq!(exposed, BTreeSet::from([1883, 9883]));
}

/// The ports of the Dockerfile's EXPOSE lines.
fn exposed_ports() -> BTreeSet<u16> {
    read("docker/Dockerfile")
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| {
            l.split_whitespace()
                .map(|p| p.parse().expect("EXPOSE port"))
                .collect::<Vec<u16>>()
        })
        .collect()
}

#[test]
fn readme_docker_commands_match_the_dockerfile() {
    let readme = read("README.md");
    let dockerfile = read("docker/Dockerfile");
    let find = |prefix: &str| -> String {
        readme
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("README has no `{prefix}` command"))
            .to_owned()
    };
    let build = find("docker build ");
    let run = find("docker run ");
    // The same commands are quoted at the top of the Dockerfile.
    for cmd in [&build, &run] {
        assert!(
            dockerfile.contains(&format!("#   {cmd}\n")),
            "Dockerfile header lacks `{cmd}`"
        );
    }
    let words: Vec<&str> = build.split_whitespace().collect();
    assert!(build.contains("-f docker/Dockerfile"), "{build}");
    assert_eq!(
        words.last(),
        Some(&"."),
        "build context is the repository root: {build}"
    );
    // Published container ports == EXPOSE.
    let words: Vec<&str> = run.split_whitespace().collect();
    let published: BTreeSet<u16> = words
        .windows(2)
        .filter(|w| w[0] == "-p")
        .map(|w| {
            w[1].rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("-p port")
        })
        .collect();
    assert_eq!(
        published,
        exposed_ports(),
        "README `docker run` -p vs EXPOSE"
    );
    // The volume mounted where the image declares it.
    let volume = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("VOLUME [\""))
        .and_then(|l| l.strip_suffix("\"]"))
        .expect("VOLUME line");
    assert!(
        words
            .windows(2)
            .any(|w| w[0] == "-v" && w[1].ends_with(&format!(":{volume}"))),
        "README `docker run` must mount {volume}: {run}"
    );
    // Non-root, multi-stage, health check on /healthz of the exposed admin port.
    assert!(dockerfile
        .lines()
        .any(|l| l.starts_with("USER ") && !l.contains("root")));
    assert!(
        dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count()
            >= 2
    );
    assert!(dockerfile.contains("http://127.0.0.1:9883/healthz"));
    for pkg in ["cmake", "libcurl4-openssl-dev", "libssl-dev", "pkg-config"] {
        assert!(dockerfile.contains(pkg), "build stage needs {pkg}");
    }
}
