//! The deployment artefacts under deploy/, checked with the real tools:
//!
//! - every kustomization renders (`kubectl kustomize`; a kustomize Component
//!   is rendered on top of the base it patches) and its output passes
//!   `kubernetes-validate --strict` for the oldest and newest Kubernetes
//!   versions the manifests support;
//! - every Envoy bootstrap (deploy/envoy/*.yaml and every one that a rendered
//!   ConfigMap carries) passes `envoy --mode validate` without warnings;
//! - every m2m-authz config that a rendered ConfigMap or Secret carries
//!   passes `m2m-authz check-config` (the real binary);
//! - ports, names and mounts agree between the manifests, the Envoy bootstrap
//!   and the m2m-authz config, and every Pod is locked down;
//! - the Istio files (no schemas here) parse and agree with each other and
//!   with the shared Service: the CUSTOM provider, path normalization, STRICT
//!   mTLS, the ALLOW policy's ports and principals, the provider's egress;
//! - the Envoy Gateway example (Gateway API and SecurityPolicy: no schemas
//!   here either) is wired together and its `extAuth.grpc` reaches the
//!   shared Service's Check port.
//!
//! Needs `kubectl` on PATH (or `$KUBECTL`) and `scripts/tools` (Envoy and
//! kubernetes-validate in .tools/venv): without them each test says what it
//! needs and is skipped, or fails under `M2M_AUTHZ_REQUIRE_TOOLS=1`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use common::process::TempDir;
use serde::Deserialize as _;
use serde_yaml_ng::Value;

/// The example application Pod (Envoy + m2m-authz native sidecar).
const BASE: &str = "deploy/kubernetes";
/// m2m-authz as a shared gRPC service (Istio's CUSTOM provider).
const SHARED: &str = "deploy/kubernetes/shared-service";
/// Kustomize components live here and are rendered on top of `BASE`.
const COMPONENTS: &str = "deploy/kubernetes/components";
const SECRET_COMPONENT: &str = "deploy/kubernetes/components/config-in-secret";
/// PodMonitor, PrometheusRule and Grafana dashboard (tests/monitoring.rs checks the rules).
const MONITORING_COMPONENT: &str = "deploy/kubernetes/components/monitoring";
const ISTIO: &str = "deploy/istio";
/// Gateway API objects and a SecurityPolicy in front of the shared service.
const ENVOY_GATEWAY: &str = "deploy/envoy-gateway";

/// The Kubernetes versions the manifests are validated against: the oldest
/// they support (native sidecars, gRPC probes, preStop `sleep`) and the
/// newest that the pinned kubernetes-validate bundles.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

/// API groups of custom resources, which kubernetes-validate cannot check.
const CUSTOM_RESOURCE_GROUPS: &[&str] = &[
    "monitoring.coreos.com/",
    "gateway.networking.k8s.io/",
    "gateway.envoyproxy.io/",
];

/// Where m2m-authz's config is mounted and how it is named (the image's CMD).
const M2M_AUTHZ_CONFIG_KEY: &str = "config.yaml";

// ---------------------------------------------------------------------------
// Tools

use common::tools::{kubectl, kubernetes_validate};

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.success,
        "{cmd:?} failed\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    out.stdout
}

// ---------------------------------------------------------------------------
// Files and YAML

fn repo_path(relative: &str) -> PathBuf {
    common::repo_root().join(relative)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every document of a (multi-document) YAML text; empty documents skipped.
fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: invalid YAML: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn yaml_one(text: &str, what: &str) -> Value {
    let mut docs = yaml_docs(text, what);
    assert_eq!(docs.len(), 1, "{what}: expected one YAML document");
    docs.remove(0)
}

fn str_at<'a>(value: &'a Value, path: &[&str], what: &str) -> &'a str {
    at(value, path, what)
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {} is not a string", path.join(".")))
}

fn u64_at(value: &Value, path: &[&str], what: &str) -> u64 {
    at(value, path, what)
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: {} is not an unsigned integer", path.join(".")))
}

fn seq_at<'a>(value: &'a Value, path: &[&str], what: &str) -> &'a [Value] {
    at(value, path, what)
        .as_sequence()
        .unwrap_or_else(|| panic!("{what}: {} is not a list", path.join(".")))
}

fn at<'a>(value: &'a Value, path: &[&str], what: &str) -> &'a Value {
    let mut current = value;
    for (i, key) in path.iter().enumerate() {
        current = current
            .get(*key)
            .unwrap_or_else(|| panic!("{what}: missing {}", path[..=i].join(".")));
    }
    current
}

fn opt<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut current = value;
    for key in path {
        current = current.get(*key)?;
    }
    Some(current)
}

fn named<'a>(items: &'a [Value], name: &str, what: &str) -> &'a Value {
    items
        .iter()
        .find(|item| item.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("{what}: no entry named {name:?}"))
}

fn mapping_keys(value: &Value) -> BTreeSet<String> {
    value
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `to` relative to `from` (both existing dirs), for kustomize, which
/// refuses absolute resource paths.
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from = from.canonicalize().expect("canonicalize from");
    let to = to.canonicalize().expect("canonicalize to");
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for part in &to[common..] {
        rel.push(part.as_os_str());
    }
    rel
}

// ---------------------------------------------------------------------------
// Kustomizations

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KustomizeKind {
    Kustomization,
    Component,
}

/// Every kustomization file under deploy/: (its dir relative to the repo
/// root, its kind), sorted.
fn kustomizations() -> Vec<(String, KustomizeKind)> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read dir {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else if matches!(
                path.file_name().and_then(|n| n.to_str()),
                Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
            ) {
                found.push(path);
            }
        }
    }
    let root = common::repo_root();
    let mut files = Vec::new();
    walk(&root.join("deploy"), &mut files);
    let mut found: Vec<(String, KustomizeKind)> = files
        .iter()
        .map(|file| {
            let dir = file
                .parent()
                .unwrap()
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let doc = yaml_one(&read(file), &file.display().to_string());
            let kind = match doc.get("kind").and_then(Value::as_str) {
                None | Some("Kustomization") => KustomizeKind::Kustomization,
                Some("Component") => KustomizeKind::Component,
                Some(other) => panic!("{}: unknown kind {other}", file.display()),
            };
            (dir, kind)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// A kustomization's output.
struct Rendered {
    /// Its dir, relative to the repo root.
    dir: String,
    text: String,
    docs: Vec<Value>,
}

impl Rendered {
    fn objects(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
            .collect()
    }

    fn object(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .objects(kind)
            .into_iter()
            .filter(|d| opt(d, &["metadata", "name"]).and_then(Value::as_str) == Some(name))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: expected exactly one {kind} {name}",
            self.dir
        );
        found[0]
    }

    /// The one Deployment of this output.
    fn deployment(&self) -> &Value {
        let deployments = self.objects("Deployment");
        assert_eq!(
            deployments.len(),
            1,
            "{}: expected one Deployment",
            self.dir
        );
        deployments[0]
    }

    /// The files of a ConfigMap or Secret: key -> content.
    fn files_of(&self, kind: &str, name: &str) -> BTreeMap<String, String> {
        files_of(self.object(kind, name), &self.dir)
    }
}

/// The files that a ConfigMap or Secret carries: key -> content (Secret
/// `data` decoded).
fn files_of(object: &Value, what: &str) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let kind = str_at(object, &["kind"], what);
    let plain = if kind == "Secret" {
        "stringData"
    } else {
        "data"
    };
    if let Some(data) = object.get(plain).and_then(Value::as_mapping) {
        for (key, value) in data {
            files.insert(
                key.as_str().unwrap().to_owned(),
                value.as_str().unwrap().to_owned(),
            );
        }
    }
    if kind == "Secret"
        && let Some(data) = object.get("data").and_then(Value::as_mapping)
    {
        for (key, value) in data {
            // kustomize folds long values over several lines.
            let encoded: String = value
                .as_str()
                .unwrap()
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap_or_else(|e| panic!("{what}: Secret data {key:?} not base64: {e}"));
            files.insert(
                key.as_str().unwrap().to_owned(),
                String::from_utf8(bytes).expect("Secret data is UTF-8"),
            );
        }
    }
    files
}

fn render(dir: &str, kind: KustomizeKind) -> Rendered {
    let kubectl = kubectl();
    let text = match kind {
        KustomizeKind::Kustomization => {
            run_ok(Command::new(&kubectl).arg("kustomize").arg(repo_path(dir)))
        }
        KustomizeKind::Component => {
            // A component renders only as part of a kustomization: put it on
            // the base it is written for, in an overlay outside deploy/
            // (kustomize refuses an overlay nested in its base's dir).
            assert!(
                dir.starts_with(&format!("{COMPONENTS}/")),
                "{dir}: kustomize components belong under {COMPONENTS}/ (they are rendered on top of {BASE})"
            );
            let overlay = TempDir::new("kustomize-overlay");
            let base = relative_path(overlay.path(), &repo_path(BASE));
            let component = relative_path(overlay.path(), &repo_path(dir));
            std::fs::write(
                overlay.join("kustomization.yaml"),
                format!(
                    "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n  - {}\n",
                    base.display(),
                    component.display()
                ),
            )
            .expect("write overlay");
            run_ok(Command::new(&kubectl).arg("kustomize").arg(overlay.path()))
        }
    };
    let docs = yaml_docs(&text, &format!("kubectl kustomize {dir}"));
    assert!(!docs.is_empty(), "{dir}: renders nothing");
    Rendered {
        dir: dir.to_owned(),
        text,
        docs,
    }
}

/// Every kustomization under deploy/, rendered once for all tests.
fn rendered() -> &'static [Rendered] {
    static RENDERED: OnceLock<Vec<Rendered>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        kustomizations()
            .into_iter()
            .map(|(dir, kind)| render(&dir, kind))
            .collect()
    })
}

fn rendered_dir(dir: &str) -> &'static Rendered {
    rendered()
        .iter()
        .find(|r| r.dir == dir)
        .unwrap_or_else(|| panic!("no kustomization rendered from {dir}"))
}

// ---------------------------------------------------------------------------
// Pod helpers

fn pod_spec(workload: &Value, what: &str) -> Value {
    at(workload, &["spec", "template", "spec"], what).clone()
}

/// Every container of a Pod spec, init containers (and native sidecars)
/// first.
fn all_containers(pod: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for field in ["initContainers", "containers"] {
        if let Some(list) = pod.get(field).and_then(Value::as_sequence) {
            all.extend(list);
        }
    }
    all
}

fn container<'a>(pod: &'a Value, name: &str, what: &str) -> &'a Value {
    all_containers(pod)
        .into_iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("{what}: no container {name}"))
}

/// The value following `flag` in a container's command line (args or
/// command).
fn flag_value<'a>(container: &'a Value, flag: &str, what: &str) -> &'a str {
    let mut words = Vec::new();
    for field in ["command", "args"] {
        if let Some(list) = container.get(field).and_then(Value::as_sequence) {
            words.extend(list.iter().filter_map(Value::as_str));
        }
    }
    words
        .iter()
        .position(|w| *w == flag)
        .and_then(|i| words.get(i + 1).copied())
        .unwrap_or_else(|| panic!("{what}: no {flag} VALUE in {words:?}"))
}

/// The ConfigMap or Secret (kind, name) mounted, whole and read-only, at the
/// directory of the absolute path `file_path` in `container`.
fn mounted_source(pod: &Value, container: &Value, file_path: &str, what: &str) -> (String, String) {
    let (dir, _file) = file_path.rsplit_once('/').expect("absolute file path");
    let mount = seq_at(container, &["volumeMounts"], what)
        .iter()
        .find(|m| m.get("mountPath").and_then(Value::as_str) == Some(dir))
        .unwrap_or_else(|| panic!("{what}: nothing mounted at {dir}"));
    assert!(
        mount.get("subPath").is_none(),
        "{what}: mount whole volumes at {dir}, not subPath"
    );
    assert_eq!(
        mount.get("readOnly").and_then(Value::as_bool),
        Some(true),
        "{what}: {dir} must be mounted readOnly"
    );
    let volume_name = str_at(mount, &["name"], what);
    let volume = named(seq_at(pod, &["volumes"], what), volume_name, what);
    let (kind, name) = if let Some(cm) = volume.get("configMap") {
        ("ConfigMap", str_at(cm, &["name"], what))
    } else if let Some(secret) = volume.get("secret") {
        ("Secret", str_at(secret, &["secretName"], what))
    } else {
        panic!("{what}: volume {volume_name} is neither a ConfigMap nor a Secret")
    };
    (kind.to_owned(), name.to_owned())
}

/// The m2m-authz config file of a rendered Pod: its YAML text.
fn m2m_authz_config(r: &Rendered) -> String {
    let what = r.dir.as_str();
    let pod = pod_spec(r.deployment(), what);
    let sidecar = container(&pod, "m2m-authz", what);
    let path = flag_value(sidecar, "--config", what);
    let (kind, name) = mounted_source(&pod, sidecar, path, what);
    let key = path.rsplit('/').next().unwrap();
    assert_eq!(key, M2M_AUTHZ_CONFIG_KEY, "{what}: config file name");
    r.files_of(&kind, &name)
        .remove(key)
        .unwrap_or_else(|| panic!("{what}: {kind} {name} has no key {key}"))
}

/// The Envoy bootstrap of a rendered Pod: its YAML text.
fn envoy_bootstrap(r: &Rendered) -> String {
    let what = r.dir.as_str();
    let pod = pod_spec(r.deployment(), what);
    let envoy = container(&pod, "envoy", what);
    let path = flag_value(envoy, "--config-path", what);
    let (kind, name) = mounted_source(&pod, envoy, path, what);
    let key = path.rsplit('/').next().unwrap();
    r.files_of(&kind, &name)
        .remove(key)
        .unwrap_or_else(|| panic!("{what}: {kind} {name} has no key {key}"))
}

fn parse_addr(addr: &str, what: &str) -> (String, u16) {
    let (host, port) = addr
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{what}: {addr:?} is not HOST:PORT"));
    (
        host.to_owned(),
        port.parse()
            .unwrap_or_else(|_| panic!("{what}: bad port in {addr:?}")),
    )
}

fn parse_duration(text: &str, what: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("{what}: duration {text:?}: {e}"))
}

/// Where m2m-authz serves Check (`listen.grpc`): TCP `HOST:PORT`, or a Unix
/// domain socket `unix:/absolute/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum GrpcListen {
    Tcp(String, u16),
    Unix(String),
}

impl GrpcListen {
    fn parse(addr: &str, what: &str) -> Self {
        match addr.strip_prefix("unix:") {
            Some(path) => {
                assert!(
                    path.starts_with('/'),
                    "{what}: listen.grpc {addr:?}: the socket path must be absolute"
                );
                GrpcListen::Unix(path.to_owned())
            }
            None => {
                let (host, port) = parse_addr(addr, what);
                GrpcListen::Tcp(host, port)
            }
        }
    }

    /// (host, port), for what can only be reached over TCP.
    fn tcp(&self, what: &str) -> (String, u16) {
        match self {
            GrpcListen::Tcp(host, port) => (host.clone(), *port),
            GrpcListen::Unix(path) => {
                panic!("{what}: listen.grpc is the Unix socket {path:?}, TCP HOST:PORT needed here")
            }
        }
    }
}

/// The `listen` section of an m2m-authz config.
struct Listen {
    grpc: GrpcListen,
    /// `listen.admin` (HTTP /healthz, /readyz, /metrics), if set; the binary's
    /// default is loopback, which no kubelet probe can reach.
    admin: Option<(String, u16)>,
    drain_timeout: Duration,
}

fn m2m_authz_listen(config: &str, what: &str) -> Listen {
    let doc = yaml_one(config, what);
    let grpc = GrpcListen::parse(str_at(&doc, &["listen", "grpc"], what), what);
    let admin = opt(&doc, &["listen", "admin"])
        .and_then(Value::as_str)
        .map(|a| parse_addr(a, what));
    let drain_timeout = opt(&doc, &["listen", "drain_timeout"])
        .and_then(Value::as_str)
        .map(|d| parse_duration(d, what))
        .unwrap_or(Duration::from_secs(10));
    Listen {
        grpc,
        admin,
        drain_timeout,
    }
}

/// Every probe of m2m-authz's container must reach a listener that the
/// kubelet can connect to (not loopback, not a Unix socket): gRPC health or
/// TCP on the Check port, or HTTP /healthz or /readyz on the admin port.
fn check_m2m_authz_probes(container: &Value, listen: &Listen, what: &str) {
    for probe_name in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let Some(probe) = container.get(probe_name) else {
            continue;
        };
        let what = format!("{what} m2m-authz {probe_name}");
        let port = probe_port(container, probe, &what);
        let (host, target) = if let Some(http) = probe.get("httpGet") {
            let path = str_at(http, &["path"], &what);
            let want = if probe_name == "readinessProbe" {
                "/readyz"
            } else {
                "/healthz"
            };
            assert_eq!(path, want, "{what}: path");
            let admin = listen
                .admin
                .clone()
                .unwrap_or_else(|| panic!("{what}: HTTP probe but no listen.admin"));
            (admin.0, admin.1)
        } else {
            assert!(
                probe.get("grpc").is_some() || probe.get("tcpSocket").is_some(),
                "{what}: gRPC health or TCP on the Check port, or HTTP on admin"
            );
            if probe_name == "readinessProbe" {
                assert!(
                    probe.get("grpc").is_some(),
                    "{what}: readiness must be gRPC health (SERVING once keys load)"
                );
            }
            if let GrpcListen::Unix(path) = &listen.grpc {
                panic!(
                    "{what}: targets the Check port, but Check is on the Unix socket {path:?}: the kubelet cannot probe a socket (probe the admin port over HTTP)"
                );
            }
            listen.grpc.tcp(&what)
        };
        assert_eq!(port, target, "{what}: probe port");
        assert_ne!(
            host, "127.0.0.1",
            "{what}: the kubelet cannot reach a loopback listener"
        );
    }
}

/// (address, port) of a named Envoy listener.
fn envoy_listener(bootstrap: &Value, name: &str, what: &str) -> (String, u16) {
    let listener = named(
        seq_at(bootstrap, &["static_resources", "listeners"], what),
        name,
        what,
    );
    let socket = at(listener, &["address", "socket_address"], what);
    (
        str_at(socket, &["address"], what).to_owned(),
        u64_at(socket, &["port_value"], what) as u16,
    )
}

/// An Envoy endpoint address: `socket_address` (TCP) or `pipe` (Unix socket).
#[derive(Clone, Debug, PartialEq, Eq)]
enum EnvoyAddress {
    Tcp(String, u16),
    Pipe(String),
}

/// The address of every endpoint of a named Envoy cluster.
fn envoy_cluster_endpoints(bootstrap: &Value, name: &str, what: &str) -> Vec<EnvoyAddress> {
    let cluster = named(
        seq_at(bootstrap, &["static_resources", "clusters"], what),
        name,
        what,
    );
    let what = format!("{what} Envoy cluster {name}");
    let mut endpoints = Vec::new();
    for locality in seq_at(cluster, &["load_assignment", "endpoints"], &what) {
        for lb in seq_at(locality, &["lb_endpoints"], &what) {
            let address = at(lb, &["endpoint", "address"], &what);
            endpoints.push(match (address.get("socket_address"), address.get("pipe")) {
                (Some(socket), None) => EnvoyAddress::Tcp(
                    str_at(socket, &["address"], &what).to_owned(),
                    u64_at(socket, &["port_value"], &what) as u16,
                ),
                (None, Some(pipe)) => EnvoyAddress::Pipe(str_at(pipe, &["path"], &what).to_owned()),
                _ => panic!(
                    "{what}: endpoint address must be one of socket_address or pipe: {address:?}"
                ),
            });
        }
    }
    endpoints
}

/// The containers of the example Pod that share m2m-authz's Check socket.
const SOCKET_CONTAINERS: [&str; 2] = ["m2m-authz", "envoy"];

/// m2m-authz's Check socket at `socket` (in `pod`) is reachable by Envoy
/// only: its directory is the mountPath of an emptyDir that m2m-authz
/// (writable: it creates the socket) and Envoy mount there and no other
/// container mounts, and Envoy may connect to the socket (mode 0660: same
/// user or same group as m2m-authz).
fn check_socket_volume(pod: &Value, socket: &str, what: &str) {
    let dir = Path::new(socket)
        .parent()
        .and_then(Path::to_str)
        .filter(|d| !socket.ends_with('/') && *d != "/")
        .unwrap_or_else(|| {
            panic!("{what}: socket {socket:?} must be a file in a directory of its own")
        });
    let mounts = |c: &'_ Value| -> Vec<Value> {
        c.get("volumeMounts")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default()
    };
    let mount_path = |m: &Value, what: &str| {
        str_at(m, &["mountPath"], what)
            .trim_end_matches('/')
            .to_owned()
    };

    let server = container(pod, "m2m-authz", what);
    let mount = mounts(server)
        .into_iter()
        .find(|m| mount_path(m, what) == dir)
        .unwrap_or_else(|| {
            panic!("{what}: m2m-authz mounts no volume at {dir}, the directory of its socket {socket:?}")
        });
    assert_ne!(
        mount.get("readOnly").and_then(Value::as_bool),
        Some(true),
        "{what}: m2m-authz creates its socket in {dir}: mount it writable"
    );
    let volume_name = str_at(&mount, &["name"], what).to_owned();
    let volume = named(seq_at(pod, &["volumes"], what), &volume_name, what);
    assert!(
        volume.get("emptyDir").is_some(),
        "{what}: volume {volume_name} (the socket's directory) must be an emptyDir, private to the Pod: {volume:?}"
    );

    let mut mounted_by = BTreeSet::new();
    for c in all_containers(pod) {
        let cname = str_at(c, &["name"], what);
        for m in mounts(c) {
            if str_at(&m, &["name"], what) != volume_name {
                continue;
            }
            mounted_by.insert(cname);
            if !SOCKET_CONTAINERS.contains(&cname) {
                continue; // Refused below, with the list of who mounts it.
            }
            assert_eq!(
                mount_path(&m, what),
                dir,
                "{what}: container {cname} must mount volume {volume_name} at {dir}, where the socket is"
            );
            assert!(
                m.get("subPath").is_none() && m.get("subPathExpr").is_none(),
                "{what}: container {cname} must mount volume {volume_name} whole, not a subPath"
            );
        }
    }
    assert_eq!(
        mounted_by,
        BTreeSet::from(SOCKET_CONTAINERS),
        "{what}: volume {volume_name} holds the Check socket {socket:?}: exactly m2m-authz and envoy must mount it (any container that mounts it can ask for checks)"
    );

    // The socket is created with mode 0660.
    let id = |c: &Value, field: &str| {
        opt(c, &["securityContext", field])
            .or_else(|| opt(pod, &["securityContext", field]))
            .and_then(Value::as_u64)
    };
    let envoy = container(pod, "envoy", what);
    let (server_uid, envoy_uid) = (id(server, "runAsUser"), id(envoy, "runAsUser"));
    let (server_gid, envoy_gid) = (id(server, "runAsGroup"), id(envoy, "runAsGroup"));
    assert!(
        (server_uid.is_some() && server_uid == envoy_uid)
            || (server_gid.is_some() && server_gid == envoy_gid),
        "{what}: m2m-authz creates its socket with mode 0660: envoy must run as the same user or group (runAsUser {server_uid:?} vs {envoy_uid:?}, runAsGroup {server_gid:?} vs {envoy_gid:?})"
    );
}

/// The containerPort of a container's named port.
fn container_port(container: &Value, name: &str, what: &str) -> u16 {
    u64_at(
        named(seq_at(container, &["ports"], what), name, what),
        &["containerPort"],
        what,
    ) as u16
}

/// A probe's port: a number, or the name of one of the container's ports.
fn probe_port(container: &Value, probe: &Value, what: &str) -> u16 {
    let port = ["httpGet", "grpc", "tcpSocket"]
        .iter()
        .find_map(|kind| opt(probe, &[kind, "port"]))
        .unwrap_or_else(|| panic!("{what}: probe without httpGet/grpc/tcpSocket port"));
    match port {
        Value::Number(n) => n.as_u64().unwrap() as u16,
        Value::String(name) => container_port(container, name, what),
        other => panic!("{what}: bad probe port {other:?}"),
    }
}

/// An image reference that cannot move: `@sha256:` plus 64 hex digits, or a
/// full `[v]MAJOR.MINOR.PATCH[-suffix]` version tag (not `latest`, `1`, `1.0`,
/// `stable`, `alpine`: tags that are re-pointed as releases come out).
fn image_is_pinned(image: &str) -> bool {
    if let Some((_, digest)) = image.split_once("@sha256:") {
        return digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
    }
    let Some(tag) = image
        .rsplit_once(':')
        .map(|(_, t)| t)
        .filter(|t| !t.contains('/'))
    else {
        return false;
    };
    let version = tag.strip_prefix('v').unwrap_or(tag);
    let version = version.split_once('-').map_or(version, |(v, _)| v);
    let parts: Vec<&str> = version.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[test]
fn image_pinning_rule() {
    for pinned in [
        "envoyproxy/envoy:v1.40.0",
        "registry.example.com:5000/m2m-authz:0.1.0",
        "hashicorp/http-echo:1.0.0",
        "redis:7.4.1-bookworm",
        "gcr.io/distroless/cc-debian12@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        assert!(image_is_pinned(pinned), "{pinned}");
    }
    for floating in [
        "m2m-authz",
        "envoyproxy/envoy:latest",
        "hashicorp/http-echo:1.0",
        "redis:7",
        "registry.example.com:5000/m2m-authz",
        "gcr.io/distroless/cc-debian12:nonroot",
        "x@sha256:abc",
        "x:1..2",
    ] {
        assert!(!image_is_pinned(floating), "{floating}");
    }
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn every_kustomization_renders() {
    crate::needs!(Kubectl);
    let found = kustomizations();
    let dirs: BTreeSet<&str> = found.iter().map(|(d, _)| d.as_str()).collect();
    for expected in [BASE, SHARED, SECRET_COMPONENT] {
        assert!(
            dirs.contains(expected),
            "{expected}: no kustomization (found {dirs:?})"
        );
    }
    assert_eq!(
        found
            .iter()
            .find(|(d, _)| d == SECRET_COMPONENT)
            .map(|(_, k)| *k),
        Some(KustomizeKind::Component)
    );
    let rendered = rendered();
    assert_eq!(rendered.len(), found.len());
    for r in rendered {
        for doc in &r.docs {
            for field in ["apiVersion", "kind"] {
                assert!(
                    doc.get(field).is_some(),
                    "{}: object without {field}",
                    r.dir
                );
            }
            str_at(doc, &["metadata", "name"], &r.dir);
        }
    }
}

#[test]
fn rendered_manifests_pass_kubernetes_validate_strict() {
    crate::needs!(Kubectl, KubernetesValidate);
    let validate = kubernetes_validate();
    let dir = TempDir::new("kubernetes-validate");
    for r in rendered() {
        let file = dir.join(&format!("{}.yaml", r.dir.replace('/', "_")));
        // kubernetes-validate has no schemas for custom resources (the Prometheus Operator's
        // PodMonitor, PrometheusRule): tests/monitoring.rs checks those.
        let builtin: Vec<&Value> = r
            .docs
            .iter()
            .filter(|d| {
                !opt(d, &["apiVersion"])
                    .and_then(Value::as_str)
                    .is_some_and(|v| CUSTOM_RESOURCE_GROUPS.iter().any(|g| v.starts_with(g)))
            })
            .collect();
        let text = if builtin.len() == r.docs.len() {
            r.text.clone()
        } else {
            let docs: Vec<String> = builtin
                .iter()
                .map(|d| serde_yaml_ng::to_string(d).expect("serialize object"))
                .collect();
            docs.join("---\n")
        };
        std::fs::write(&file, text).expect("write rendered manifests");
        for version in KUBERNETES_VERSIONS {
            let out = run(Command::new(&validate)
                .arg("--strict")
                .args(["-k", version])
                .arg(&file));
            let report = format!(
                "kubernetes-validate --strict -k {version} on `kubectl kustomize {}`:\n{}\n{}",
                r.dir, out.stdout, out.stderr
            );
            assert!(out.success, "{report}");
            // Unknown kinds only warn (exit 0): every object must have been
            // checked against a schema.
            assert!(!out.stdout.contains("WARN"), "{report}");
            let passed = out.stdout.matches(" passed for resource ").count();
            assert_eq!(
                passed,
                builtin.len(),
                "not every object validated: {report}"
            );
        }
    }
}

#[test]
fn envoy_configs_pass_envoy_validate() {
    crate::needs!(Kubectl, Envoy);
    let envoy = common::tools::envoy_bin();
    let dir = TempDir::new("envoy-validate");
    let mut configs: Vec<(String, PathBuf)> = Vec::new();

    let envoy_dir = repo_path("deploy/envoy");
    let bootstrap = read(&envoy_dir.join("envoy.yaml"));
    for entry in std::fs::read_dir(&envoy_dir).expect("read deploy/envoy") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = read(&path);
        if yaml_one(&text, &path.display().to_string()).is_sequence() {
            // An http_filters snippet (rbac-user-deny-list.yaml): validated in place, before
            // envoy.yaml's router, as its comment says to use it.
            let router = "                  - name: envoy.filters.http.router\n";
            assert_eq!(
                bootstrap.matches(router).count(),
                1,
                "envoy.yaml's router filter"
            );
            let indent = &router[..router.find('-').unwrap()];
            let snippet: String = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("{indent}{l}\n"))
                .collect();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let file = dir.join(&format!("envoy-with-{name}"));
            std::fs::write(
                &file,
                bootstrap.replace(router, &format!("{snippet}{router}")),
            )
            .expect("write Envoy config");
            configs.push((format!("deploy/envoy/envoy.yaml with {name}"), file));
        } else {
            configs.push((path.display().to_string(), path));
        }
    }
    assert!(
        configs.iter().any(|(_, p)| p.ends_with("envoy.yaml")),
        "deploy/envoy/envoy.yaml missing"
    );
    // Every Envoy bootstrap that a rendered ConfigMap carries.
    let mut in_configmaps = 0;
    for r in rendered() {
        for cm in r.objects("ConfigMap") {
            for (key, content) in files_of(cm, &r.dir) {
                let is_bootstrap = key.ends_with(".yaml")
                    && yaml_docs(&content, &key)
                        .first()
                        .is_some_and(|d| d.get("static_resources").is_some());
                if is_bootstrap {
                    let name = str_at(cm, &["metadata", "name"], &r.dir);
                    let file = dir.join(&format!("{name}-{key}"));
                    std::fs::write(&file, &content).expect("write Envoy config");
                    configs.push((format!("{} ConfigMap {name} key {key}", r.dir), file));
                    in_configmaps += 1;
                }
            }
        }
    }
    assert!(
        in_configmaps >= 1,
        "no Envoy bootstrap found in the rendered ConfigMaps"
    );
    // The on-disk source of the base's ConfigMap is what was rendered.
    assert_eq!(
        envoy_bootstrap(rendered_dir(BASE)),
        read(&repo_path("deploy/kubernetes/envoy.yaml"))
    );

    for (what, file) in &configs {
        let out = run(Command::new(&envoy)
            .args(["--mode", "validate", "-l", "warning", "-c"])
            .arg(file));
        let all = format!("{}{}", out.stdout, out.stderr);
        let report = format!("envoy --mode validate {what}:\n{all}");
        assert!(out.success, "{report}");
        assert!(all.contains("' OK"), "{report}");
        assert!(
            !all.contains("][warning][") && !all.contains("][error]["),
            "warnings: {report}"
        );
    }
}

#[test]
fn m2m_authz_configs_pass_check_config() {
    crate::needs!(Kubectl);
    let binary = env!("CARGO_BIN_EXE_m2m-authz");
    let dir = TempDir::new("check-config");
    let mut checked = 0;
    for r in rendered() {
        for kind in ["ConfigMap", "Secret"] {
            for object in r.objects(kind) {
                let name = str_at(object, &["metadata", "name"], &r.dir);
                let Some(content) = files_of(object, &r.dir).remove(M2M_AUTHZ_CONFIG_KEY) else {
                    continue;
                };
                let file = dir.join(&format!("{}-{name}.yaml", r.dir.replace('/', "_")));
                std::fs::write(&file, &content).expect("write config");
                let out = run(Command::new(binary)
                    .arg("check-config")
                    .arg("--config")
                    .arg(&file));
                assert!(
                    out.success && out.stdout.starts_with("ok"),
                    "m2m-authz check-config on {} {kind} {name}:\n{}{}",
                    r.dir,
                    out.stdout,
                    out.stderr
                );
                checked += 1;
            }
        }
    }
    // The base's ConfigMap, the component's Secret, the shared service's.
    assert!(checked >= 3, "only {checked} m2m-authz configs found");
    // And the files they come from (identical; checked for clear errors).
    for file in [
        "deploy/kubernetes/m2m-authz.yaml",
        "deploy/kubernetes/shared-service/m2m-authz.yaml",
        "deploy/kubernetes/components/shared-cache/m2m-authz.yaml",
    ] {
        let out = run(Command::new(binary)
            .arg("check-config")
            .arg("--config")
            .arg(repo_path(file)));
        assert!(
            out.success,
            "m2m-authz check-config --config {file}:\n{}{}",
            out.stdout, out.stderr
        );
    }
}

/// Every Pod template: non-root, read-only, no privilege, no capabilities,
/// RuntimeDefault seccomp, no API token, bounded memory, pinned images,
/// m2m-authz probes that the kubelet can reach, and a grace period that
/// covers the preStop sleeps and m2m-authz's drain.
#[test]
fn every_pod_is_locked_down() {
    crate::needs!(Kubectl);
    let mut pods = 0;
    for r in rendered() {
        for kind in ["Deployment", "DaemonSet", "StatefulSet"] {
            for workload in r.objects(kind) {
                pods += 1;
                let name = str_at(workload, &["metadata", "name"], &r.dir);
                let what = format!("{} {kind} {name}", r.dir);
                let pod = pod_spec(workload, &what);
                check_pod(r, &pod, &what);
            }
        }
    }
    assert!(pods >= 3, "only {pods} Pod templates found");
}

fn check_pod(r: &Rendered, pod: &Value, what: &str) {
    assert_eq!(
        pod.get("automountServiceAccountToken")
            .and_then(Value::as_bool),
        Some(false),
        "{what}: automountServiceAccountToken"
    );
    let account = str_at(pod, &["serviceAccountName"], what);
    let sa = r.object("ServiceAccount", account);
    assert_eq!(
        sa.get("automountServiceAccountToken")
            .and_then(Value::as_bool),
        Some(false),
        "{what}: ServiceAccount {account} automountServiceAccountToken"
    );
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(
            pod.get(field).and_then(Value::as_bool),
            Some(true),
            "{what}: {field}"
        );
    }
    let pod_sc = at(pod, &["securityContext"], what);
    assert_eq!(
        pod_sc.get("runAsNonRoot").and_then(Value::as_bool),
        Some(true),
        "{what}: pod runAsNonRoot"
    );
    assert_ne!(
        pod_sc.get("runAsUser").and_then(Value::as_u64),
        Some(0),
        "{what}: runAsUser 0"
    );
    assert_eq!(
        str_at(pod_sc, &["seccompProfile", "type"], what),
        "RuntimeDefault",
        "{what}: pod seccompProfile"
    );

    let mut pre_stop = Duration::ZERO;
    let containers = all_containers(pod);
    assert!(!containers.is_empty(), "{what}: no containers");
    for c in &containers {
        let cname = str_at(c, &["name"], what);
        let what = format!("{what} container {cname}");
        let sc = at(c, &["securityContext"], &what);
        for (field, want) in [
            ("runAsNonRoot", true),
            ("readOnlyRootFilesystem", true),
            ("allowPrivilegeEscalation", false),
        ] {
            assert_eq!(
                sc.get(field).and_then(Value::as_bool),
                Some(want),
                "{what}: securityContext.{field}"
            );
        }
        assert_ne!(
            sc.get("privileged").and_then(Value::as_bool),
            Some(true),
            "{what}: privileged"
        );
        let drop: Vec<&str> = seq_at(sc, &["capabilities", "drop"], &what)
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(drop, ["ALL"], "{what}: capabilities.drop");
        assert!(
            opt(sc, &["capabilities", "add"]).is_none(),
            "{what}: capabilities.add"
        );
        assert_eq!(
            str_at(sc, &["seccompProfile", "type"], &what),
            "RuntimeDefault",
            "{what}: seccompProfile"
        );
        for resource in ["cpu", "memory"] {
            at(c, &["resources", "requests", resource], &what);
        }
        at(c, &["resources", "limits", "memory"], &what);
        let image = str_at(c, &["image"], &what);
        assert!(
            image_is_pinned(image),
            "{what}: image {image:?} must be pinned to a full version tag (MAJOR.MINOR.PATCH) or a digest"
        );
        if let Some(seconds) = opt(c, &["lifecycle", "preStop", "sleep", "seconds"]) {
            pre_stop = pre_stop.max(Duration::from_secs(seconds.as_u64().unwrap()));
        }
        // Envoy's drain hook: `envoy-drain.sh ADMIN_PORT MIN_SECONDS MAX_SECONDS`.
        if let Some(command) = opt(c, &["lifecycle", "preStop", "exec", "command"]) {
            let command = command.as_sequence().unwrap();
            let is_drain = command
                .iter()
                .any(|a| a.as_str().is_some_and(|a| a.ends_with("/envoy-drain.sh")));
            assert!(is_drain, "{what}: unknown preStop command {command:?}");
            let max: u64 = command
                .last()
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{what}: envoy-drain.sh needs MAX_SECONDS last"));
            pre_stop = pre_stop.max(Duration::from_secs(max));
        }
    }

    // Containers stop in parallel (after their preStop), then native
    // sidecars; m2m-authz drains for up to listen.drain_timeout.
    let runs_m2m_authz = containers
        .iter()
        .any(|c| c.get("name").and_then(Value::as_str) == Some("m2m-authz"));
    let drain = if runs_m2m_authz {
        let listen = m2m_authz_listen(&m2m_authz_config(r), what);
        check_m2m_authz_probes(container(pod, "m2m-authz", what), &listen, what);
        listen.drain_timeout
    } else {
        Duration::ZERO
    };
    let grace = Duration::from_secs(u64_at(pod, &["terminationGracePeriodSeconds"], what));
    assert!(
        grace > pre_stop + drain,
        "{what}: terminationGracePeriodSeconds {grace:?} must exceed preStop {pre_stop:?} + drain_timeout {drain:?}"
    );
}

/// The example Pod: m2m-authz is a native sidecar on loopback or on a Unix
/// socket that only it and Envoy can reach, Envoy sends checks to it and
/// traffic to the loopback app, the Service reaches Envoy's listener, the
/// probes hit Envoy's probe listener.
#[test]
fn sidecar_pod_is_wired_together() {
    crate::needs!(Kubectl);
    // The base Pod, and the base with each component (which may replace the config).
    let pods: Vec<&Rendered> = rendered()
        .iter()
        .filter(|r| r.dir == BASE || r.dir.starts_with(COMPONENTS))
        .collect();
    assert!(pods.len() >= 3, "the base and its components are rendered");
    for r in pods {
        sidecar_pod_wiring(r);
    }
}

fn sidecar_pod_wiring(r: &Rendered) {
    let what = r.dir.as_str();
    let pod = pod_spec(r.deployment(), what);

    // Native sidecar: an init container that keeps running.
    let init = seq_at(&pod, &["initContainers"], what);
    let sidecar = named(init, "m2m-authz", what);
    assert_eq!(
        str_at(sidecar, &["restartPolicy"], what),
        "Always",
        "m2m-authz must be a native sidecar"
    );
    let listen = m2m_authz_listen(&m2m_authz_config(r), what);
    // Only the Pod's Envoy may ask for checks: loopback TCP, or a Unix socket
    // in a volume that only m2m-authz and Envoy mount.
    let envoy_target = match &listen.grpc {
        GrpcListen::Tcp(host, port) => {
            assert_eq!(
                host, "127.0.0.1",
                "the in-pod m2m-authz must take checks from the Pod's Envoy only (loopback)"
            );
            if let Some(ports) = sidecar.get("ports").and_then(Value::as_sequence) {
                for p in ports {
                    assert_ne!(
                        u64_at(p, &["containerPort"], what) as u16,
                        *port,
                        "the in-pod m2m-authz's Check port must not be declared"
                    );
                }
            }
            EnvoyAddress::Tcp(host.clone(), *port)
        }
        GrpcListen::Unix(path) => {
            check_socket_volume(&pod, path, what);
            EnvoyAddress::Pipe(path.clone())
        }
    };
    check_m2m_authz_probes(sidecar, &listen, what);

    let bootstrap = yaml_one(&envoy_bootstrap(r), "Envoy bootstrap");
    assert_eq!(
        envoy_cluster_endpoints(&bootstrap, "m2m_authz", what),
        [envoy_target],
        "Envoy's m2m_authz cluster must have one endpoint: m2m-authz's listen.grpc"
    );
    let app = envoy_cluster_endpoints(&bootstrap, "app", what);
    assert!(
        !app.is_empty()
            && app
                .iter()
                .all(|a| matches!(a, EnvoyAddress::Tcp(h, _) if h == "127.0.0.1")),
        "the app must be reached on loopback: {app:?}"
    );
    let admin = at(&bootstrap, &["admin", "address", "socket_address"], what);
    assert_eq!(
        str_at(admin, &["address"], what),
        "127.0.0.1",
        "Envoy's admin interface must stay on loopback"
    );

    // Service -> Envoy's ingress listener.
    let envoy = container(&pod, "envoy", what);
    let (ingress_host, ingress_port) = envoy_listener(&bootstrap, "ingress", what);
    assert_eq!(ingress_host, "0.0.0.0");
    let service = r.object("Service", "orders-api");
    let ports = seq_at(service, &["spec", "ports"], what);
    assert_eq!(ports.len(), 1, "the Service exposes Envoy's listener only");
    let target = str_at(&ports[0], &["targetPort"], what);
    assert_eq!(
        container_port(envoy, target, what),
        ingress_port,
        "Service targetPort -> Envoy ingress listener"
    );
    // Service selects this Pod.
    let selector = at(service, &["spec", "selector"], what);
    let labels = at(
        r.deployment(),
        &["spec", "template", "metadata", "labels"],
        what,
    );
    for (k, v) in selector.as_mapping().unwrap() {
        assert_eq!(labels.get(k.as_str().unwrap()), Some(v), "Service selector");
    }

    // Probes: Envoy's probe listener, /ready gated on m2m_authz and app.
    let (_, probe_listener_port) = envoy_listener(&bootstrap, "probes", what);
    for probe in ["readinessProbe", "livenessProbe"] {
        let p = at(envoy, &[probe], what);
        assert_eq!(
            probe_port(envoy, p, what),
            probe_listener_port,
            "envoy {probe} must target the probes listener"
        );
    }
    assert_eq!(
        str_at(envoy, &["readinessProbe", "httpGet", "path"], what),
        "/ready"
    );
    let probes = named(
        seq_at(&bootstrap, &["static_resources", "listeners"], what),
        "probes",
        what,
    );
    let hcm = &seq_at(
        &seq_at(probes, &["filter_chains"], what)[0],
        &["filters"],
        what,
    )[0];
    let ready_filter = seq_at(hcm, &["typed_config", "http_filters"], what)
        .iter()
        .map(|f| at(f, &["typed_config"], what))
        .find(|c| {
            c.get("headers")
                .and_then(Value::as_sequence)
                .is_some_and(|h| {
                    h.iter().any(|m| {
                        opt(m, &["string_match", "exact"]).and_then(Value::as_str) == Some("/ready")
                    })
                })
        })
        .unwrap_or_else(|| panic!("{what}: no health_check filter for /ready"));
    let required = at(ready_filter, &["cluster_min_healthy_percentages"], what);
    for cluster in ["m2m_authz", "app"] {
        let percent = opt(required, &[cluster, "value"]).and_then(Value::as_f64);
        assert_eq!(
            percent,
            Some(100.0),
            "/ready must require {cluster} to be healthy"
        );
    }
    let m2m_cluster = named(
        seq_at(&bootstrap, &["static_resources", "clusters"], what),
        "m2m_authz",
        what,
    );
    let hc = &seq_at(m2m_cluster, &["health_checks"], what)[0];
    assert!(
        hc.get("grpc_health_check").is_some(),
        "m2m_authz cluster must be gRPC health checked"
    );
}

/// The shared service: m2m-authz on all interfaces, the Service's gRPC port
/// reaches it, the readiness probe is its gRPC health.
#[test]
fn shared_service_is_wired_together() {
    crate::needs!(Kubectl);
    let r = rendered_dir(SHARED);
    let what = SHARED;
    let pod = pod_spec(r.deployment(), what);
    let m2m = container(&pod, "m2m-authz", what);
    let listen = m2m_authz_listen(&m2m_authz_config(r), what);
    let (host, port) = listen.grpc.tcp(what);
    assert_eq!(
        host, "0.0.0.0",
        "a shared service must listen on all interfaces"
    );
    assert_eq!(container_port(m2m, "grpc", what), port);
    for probe in ["readinessProbe", "livenessProbe"] {
        assert!(m2m.get(probe).is_some(), "{what}: {probe} missing");
    }
    check_m2m_authz_probes(m2m, &listen, what);

    let service = r.object("Service", "m2m-authz");
    let ports = seq_at(service, &["spec", "ports"], what);
    assert_eq!(ports.len(), 1);
    assert_eq!(str_at(&ports[0], &["appProtocol"], what), "grpc");
    assert_eq!(
        container_port(m2m, str_at(&ports[0], &["targetPort"], what), what),
        port
    );

    // NetworkPolicies: the Check port admits exactly the Pods labelled as
    // check clients; the admin port exactly the monitoring namespace.
    let admin_port = listen.admin.clone().expect("listen.admin").1;
    // A selector matches when each of its labels is on the Pod template (which may carry more).
    let selects_m2m_authz = |p: &Value| {
        let pod = at(
            r.deployment(),
            &["spec", "template", "metadata", "labels"],
            what,
        );
        match at(p, &["spec", "podSelector", "matchLabels"], what) {
            Value::Mapping(wanted) => {
                !wanted.is_empty() && wanted.iter().all(|(k, v)| pod.get(k) == Some(v))
            }
            _ => false,
        }
    };
    let mut admitted: BTreeMap<u16, Vec<Value>> = BTreeMap::new();
    for policy in r.objects("NetworkPolicy") {
        assert!(
            selects_m2m_authz(policy),
            "{what}: NetworkPolicy selects m2m-authz's Pods"
        );
        for rule in seq_at(policy, &["spec", "ingress"], what) {
            let peers = seq_at(rule, &["from"], what);
            assert!(
                !peers.is_empty(),
                "{what}: NetworkPolicy rule without peers"
            );
            for p in seq_at(rule, &["ports"], what) {
                admitted
                    .entry(u64_at(p, &["port"], what) as u16)
                    .or_default()
                    .extend(peers.iter().cloned());
            }
        }
    }
    let check_peer: Value =
        serde_yaml_ng::from_str("podSelector: {matchLabels: {m2m-authz/check-client: \"true\"}}")
            .unwrap();
    let monitoring_peer: Value = serde_yaml_ng::from_str(
        "namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}",
    )
    .unwrap();
    assert_eq!(
        admitted,
        BTreeMap::from([
            (port, vec![check_peer]),
            (admin_port, vec![monitoring_peer])
        ]),
        "{what}: who may connect to which port"
    );
    let readme = read(&repo_path("deploy/README.md"));
    assert!(
        readme.contains("m2m-authz/check-client"),
        "deploy/README.md must document the check-client label"
    );

    // A fail-closed dependency: HPA on CPU over this Deployment, a shipped
    // PriorityClass, spread over zones and nodes, memory requested in full,
    // CPU requested from the benchmarks.
    let deployment = r.deployment();
    let hpa = r.object("HorizontalPodAutoscaler", "m2m-authz");
    assert_eq!(str_at(hpa, &["apiVersion"], what), "autoscaling/v2");
    let target = at(hpa, &["spec", "scaleTargetRef"], what);
    assert_eq!(str_at(target, &["kind"], what), "Deployment");
    assert_eq!(
        str_at(target, &["name"], what),
        str_at(deployment, &["metadata", "name"], what)
    );
    let min = u64_at(hpa, &["spec", "minReplicas"], what);
    assert!(
        min >= 2,
        "{what}: minReplicas {min}: one replica is a single point of failure"
    );
    assert!(u64_at(hpa, &["spec", "maxReplicas"], what) > min);
    let metrics = seq_at(hpa, &["spec", "metrics"], what);
    assert!(
        metrics
            .iter()
            .any(
                |m| opt(m, &["resource", "name"]).and_then(Value::as_str) == Some("cpu")
                    && opt(m, &["resource", "target", "type"]).and_then(Value::as_str)
                        == Some("Utilization")
            ),
        "{what}: the HPA scales on CPU utilization"
    );
    let class = str_at(&pod, &["priorityClassName"], what);
    let priority = r.object("PriorityClass", class);
    let value = u64_at(priority, &["value"], what);
    assert!(
        value > 0 && value < 1_000_000_000,
        "{what}: priority {value}: above ordinary workloads, below the system classes"
    );
    assert_ne!(
        priority.get("globalDefault").and_then(Value::as_bool),
        Some(true)
    );
    let keys: BTreeSet<&str> = seq_at(&pod, &["topologySpreadConstraints"], what)
        .iter()
        .map(|c| {
            assert_eq!(
                at(c, &["labelSelector", "matchLabels"], what),
                at(deployment, &["spec", "selector", "matchLabels"], what),
                "{what}: spread counts this Deployment's Pods"
            );
            str_at(c, &["topologyKey"], what)
        })
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["topology.kubernetes.io/zone", "kubernetes.io/hostname"]),
        "{what}: spread over zones and nodes"
    );
    let resources = at(m2m, &["resources"], what);
    assert_eq!(
        memory_bytes(str_at(resources, &["requests", "memory"], what), what),
        memory_bytes(str_at(resources, &["limits", "memory"], what), what),
        "{what}: memory requested up to the limit"
    );
    let cpu = millicores(str_at(resources, &["requests", "cpu"], what), what);
    assert!(
        (250..=2000).contains(&cpu),
        "{what}: cpu request {cpu}m (500m = about 7k cached checks/s at 14.3k per core)"
    );
    let config = yaml_one(&m2m_authz_config(r), what);
    check_cache_sized_for_limit(r, &config, what);
}

/// deploy/istio: parse every file; the AuthorizationPolicy is CUSTOM with a
/// provider that meshconfig.yaml defines, and that provider points at the
/// shared Service's gRPC port, fails closed and uses only fields that
/// Istio's EnvoyExternalAuthorizationGrpcProvider has.
#[test]
fn istio_provider_policy_and_service_agree() {
    crate::needs!(Kubectl);
    let dir = repo_path(ISTIO);
    let docs = istio_docs();

    // meshconfig.yaml: values for the istiod chart.
    let mesh = yaml_one(&read(&dir.join("meshconfig.yaml")), "meshconfig.yaml");
    let providers = seq_at(
        &mesh,
        &["meshConfig", "extensionProviders"],
        "meshconfig.yaml",
    );
    let mut provider_names = BTreeSet::new();
    for p in providers {
        provider_names.insert(str_at(p, &["name"], "meshconfig.yaml").to_owned());
    }
    let provider = named(providers, "m2m-authz", "meshconfig.yaml");
    assert_eq!(
        mapping_keys(provider),
        BTreeSet::from(["name".to_owned(), "envoyExtAuthzGrpc".to_owned()]),
        "the m2m-authz provider is a gRPC ext_authz provider"
    );
    let grpc = at(provider, &["envoyExtAuthzGrpc"], "meshconfig.yaml");
    let allowed: BTreeSet<String> = [
        "service",
        "port",
        "timeout",
        "failOpen",
        "statusOnError",
        "includeRequestBodyInCheck",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let keys = mapping_keys(grpc);
    assert!(
        keys.is_subset(&allowed),
        "unknown envoyExtAuthzGrpc fields: {:?}",
        keys.difference(&allowed).collect::<Vec<_>>()
    );
    assert_eq!(
        grpc.get("failOpen").and_then(Value::as_bool),
        Some(false),
        "must fail closed, explicitly"
    );
    let timeout = parse_duration(str_at(grpc, &["timeout"], "meshconfig.yaml"), "timeout");
    assert!(timeout <= Duration::from_secs(5), "timeout {timeout:?}");
    if let Some(status) = grpc.get("statusOnError") {
        let status = status.as_str().expect("statusOnError is a string");
        assert!(
            status.len() == 3 && status.parse::<u16>().is_ok(),
            "statusOnError {status:?}"
        );
    }

    // service: <Service name>.<namespace>.svc.cluster.local, port: its port.
    let service_host = str_at(grpc, &["service"], "meshconfig.yaml");
    let labels: Vec<&str> = service_host.split('.').collect();
    assert!(
        labels.len() == 5 && labels[2..] == ["svc", "cluster", "local"],
        "service {service_host:?} must be NAME.NAMESPACE.svc.cluster.local"
    );
    let shared = rendered_dir(SHARED);
    let service = shared.object("Service", labels[0]);
    let service_port = u64_at(
        &seq_at(service, &["spec", "ports"], SHARED)[0],
        &["port"],
        SHARED,
    );
    assert_eq!(
        u64_at(grpc, &["port"], "meshconfig.yaml"),
        service_port,
        "provider port = shared Service port"
    );

    // Every CUSTOM AuthorizationPolicy (m2m-authz-callers.yaml, the ALLOW one, is checked by
    // istio_shared_service_is_mtls_only_and_egress_is_declared).
    let policies: Vec<&(String, Value)> = docs
        .iter()
        .filter(|(_, d)| d.get("kind").and_then(Value::as_str) == Some("AuthorizationPolicy"))
        .filter(|(_, d)| opt(d, &["spec", "action"]).and_then(Value::as_str) == Some("CUSTOM"))
        .collect();
    assert!(
        !policies.is_empty(),
        "no CUSTOM AuthorizationPolicy in {ISTIO}"
    );
    for (file, policy) in policies {
        assert_eq!(
            str_at(policy, &["apiVersion"], file),
            "security.istio.io/v1"
        );
        let name = str_at(policy, &["metadata", "name"], file);
        let what = format!("{file} AuthorizationPolicy {name}");
        let spec = at(policy, &["spec"], &what);
        let spec_fields: BTreeSet<String> = [
            "selector",
            "targetRef",
            "targetRefs",
            "rules",
            "action",
            "provider",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let keys = mapping_keys(spec);
        assert!(
            keys.is_subset(&spec_fields),
            "{what}: unknown spec fields {:?}",
            keys.difference(&spec_fields).collect::<Vec<_>>()
        );
        assert_eq!(str_at(spec, &["action"], &what), "CUSTOM");
        let provider = str_at(spec, &["provider", "name"], &what);
        assert!(
            provider_names.contains(provider),
            "{what}: provider {provider:?} is not in meshConfig.extensionProviders {provider_names:?}"
        );
        assert!(
            !mapping_keys(at(spec, &["selector", "matchLabels"], &what)).is_empty(),
            "{what}: select the protected workloads"
        );
        assert!(
            !seq_at(spec, &["rules"], &what).is_empty(),
            "{what}: a CUSTOM policy without rules matches nothing"
        );
    }
    // Every other document is of a kind checked here or below.
    for (file, doc) in &docs {
        let kind = doc.get("kind").and_then(Value::as_str);
        assert!(
            matches!(
                kind,
                Some("AuthorizationPolicy" | "PeerAuthentication" | "ServiceEntry")
            ) || doc.get("meshConfig").is_some(),
            "{file}: unexpected document"
        );
    }
}

/// Every YAML document of deploy/istio, with its file.
fn istio_docs() -> Vec<(String, Value)> {
    let dir = repo_path(ISTIO);
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read deploy/istio") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
            let name = path.display().to_string();
            for doc in yaml_docs(&read(&path), &name) {
                docs.push((name.clone(), doc));
            }
        }
    }
    docs
}

/// The documents of one kind, as (file, document).
fn istio_kind<'a>(docs: &'a [(String, Value)], kind: &str) -> Vec<(&'a str, &'a Value)> {
    docs.iter()
        .filter(|(_, d)| d.get("kind").and_then(Value::as_str) == Some(kind))
        .map(|(f, d)| (f.as_str(), d))
        .collect()
}

/// Issue 20 item 2: the mesh decodes and merges slashes; the shared m2m-authz takes only mTLS
/// (STRICT, on every port), and only from the principals of the workloads the CUSTOM policies
/// protect (Check port) and from the monitoring namespace (admin port), both ports being the
/// Deployment's own; its provider's host is declared for egress on 443 as TLS. Namespaces,
/// labels and ports agree with meshconfig.yaml and the rendered shared service.
#[test]
fn istio_shared_service_is_mtls_only_and_egress_is_declared() {
    crate::needs!(Kubectl);
    let docs = istio_docs();
    let mesh = yaml_one(
        &read(&repo_path(ISTIO).join("meshconfig.yaml")),
        "meshconfig.yaml",
    );
    assert_eq!(
        str_at(
            &mesh,
            &["meshConfig", "pathNormalization", "normalization"],
            "meshconfig.yaml"
        ),
        "DECODE_AND_MERGE_SLASHES",
        "the mesh must decode %2F/%5C and merge slashes before policies match"
    );
    // The namespace the provider's Service lives in.
    let provider = named(
        seq_at(
            &mesh,
            &["meshConfig", "extensionProviders"],
            "meshconfig.yaml",
        ),
        "m2m-authz",
        "meshconfig.yaml",
    );
    let host = str_at(
        provider,
        &["envoyExtAuthzGrpc", "service"],
        "meshconfig.yaml",
    );
    let namespace = host
        .split('.')
        .nth(1)
        .expect("NAME.NAMESPACE.svc.cluster.local");

    let shared = rendered_dir(SHARED);
    let pod = pod_spec(shared.deployment(), SHARED);
    let pod_labels = at(
        shared.deployment(),
        &["spec", "template", "metadata", "labels"],
        SHARED,
    );
    let m2m = container(&pod, "m2m-authz", SHARED);
    let grpc_port = container_port(m2m, "grpc", SHARED).to_string();
    let admin_port = container_port(m2m, "admin", SHARED).to_string();

    // A selector that picks the shared service's Pods and nothing else of ours.
    let selects_m2m_authz = |doc: &Value, what: &str| {
        let selector = at(doc, &["spec", "selector", "matchLabels"], what);
        let keys = mapping_keys(selector);
        assert!(
            !keys.is_empty(),
            "{what}: an empty selector selects every Pod"
        );
        for key in keys {
            assert_eq!(
                selector.get(key.as_str()),
                pod_labels.get(key.as_str()),
                "{what}: selector {key} does not match the shared Deployment's Pods"
            );
        }
        assert_eq!(
            str_at(doc, &["metadata", "namespace"], what),
            namespace,
            "{what}"
        );
    };

    // STRICT mTLS, with no port let off.
    let peer = istio_kind(&docs, "PeerAuthentication");
    assert_eq!(
        peer.len(),
        1,
        "one PeerAuthentication for the shared service"
    );
    let (file, peer) = peer[0];
    let what = format!("{file} PeerAuthentication");
    assert_eq!(str_at(peer, &["apiVersion"], &what), "security.istio.io/v1");
    selects_m2m_authz(peer, &what);
    assert_eq!(str_at(peer, &["spec", "mtls", "mode"], &what), "STRICT");
    assert!(
        opt(peer, &["spec", "portLevelMtls"]).is_none(),
        "{what}: no port may be exempt from STRICT"
    );

    // The principals the CUSTOM policies' workloads run as live in their namespaces.
    let custom_namespaces: BTreeSet<&str> = istio_kind(&docs, "AuthorizationPolicy")
        .into_iter()
        .filter(|(_, d)| opt(d, &["spec", "action"]).and_then(Value::as_str) == Some("CUSTOM"))
        .map(|(f, d)| str_at(d, &["metadata", "namespace"], f))
        .collect();
    let allows: Vec<(&str, &Value)> = istio_kind(&docs, "AuthorizationPolicy")
        .into_iter()
        .filter(|(_, d)| opt(d, &["spec", "action"]).and_then(Value::as_str) == Some("ALLOW"))
        .collect();
    assert_eq!(allows.len(), 1, "one ALLOW policy for the shared service");
    let (file, allow) = allows[0];
    let what = format!("{file} AuthorizationPolicy");
    assert_eq!(
        str_at(allow, &["apiVersion"], &what),
        "security.istio.io/v1"
    );
    selects_m2m_authz(allow, &what);
    let mut ports_seen = BTreeSet::new();
    for rule in seq_at(allow, &["spec", "rules"], &what) {
        // A rule without `from` would admit any caller, meshed or not.
        let sources = seq_at(rule, &["from"], &what);
        assert!(!sources.is_empty(), "{what}: every rule names its callers");
        let mut ports = BTreeSet::new();
        for to in seq_at(rule, &["to"], &what) {
            for port in seq_at(to, &["operation", "ports"], &what) {
                ports.insert(port.as_str().expect("ports are strings").to_owned());
            }
        }
        assert_eq!(
            ports.len(),
            1,
            "{what}: each rule is for one port: {ports:?}"
        );
        let port = ports.into_iter().next().unwrap_or_default();
        for source in sources {
            let source = at(source, &["source"], &what);
            let keys = mapping_keys(source);
            if port == grpc_port {
                // Check: named workload identities only.
                assert_eq!(keys, BTreeSet::from(["principals".to_owned()]), "{what}");
                for principal in seq_at(source, &["principals"], &what) {
                    let principal = principal.as_str().expect("principal");
                    let parts: Vec<&str> = principal.split('/').collect();
                    assert!(
                        parts.len() == 5
                            && parts[1] == "ns"
                            && parts[3] == "sa"
                            && !parts[4].is_empty()
                            && !principal.contains('*'),
                        "{what}: {principal:?} must be TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT"
                    );
                    assert!(
                        custom_namespaces.contains(parts[2]),
                        "{what}: {principal:?} is not in a namespace a CUSTOM policy protects \
                         ({custom_namespaces:?})"
                    );
                }
            } else if port == admin_port {
                // Admin: the monitoring namespace.
                assert_eq!(keys, BTreeSet::from(["namespaces".to_owned()]), "{what}");
                assert!(!seq_at(source, &["namespaces"], &what).is_empty(), "{what}");
            } else {
                panic!(
                    "{what}: port {port} is neither the Check port {grpc_port} nor the admin \
                     port {admin_port} of the shared Deployment"
                );
            }
        }
        ports_seen.insert(port);
    }
    assert_eq!(
        ports_seen,
        BTreeSet::from([grpc_port.clone(), admin_port.clone()]),
        "{what}: Check and admin ports each need their callers"
    );

    // Egress: the shared config's provider host, on 443, as TLS passed through.
    let config: Value =
        serde_yaml_ng::from_str(&m2m_authz_config(shared)).expect("shared config parses");
    let base_url = str_at(&config, &["provider", "base_url"], SHARED);
    let provider_host = base_url
        .strip_prefix("https://")
        .and_then(|h| h.split(['/', ':']).next())
        .expect("an https base_url");
    let entries = istio_kind(&docs, "ServiceEntry");
    assert_eq!(entries.len(), 1, "one ServiceEntry for the provider");
    let (file, entry) = entries[0];
    let what = format!("{file} ServiceEntry");
    assert_eq!(
        str_at(entry, &["apiVersion"], &what),
        "networking.istio.io/v1"
    );
    assert_eq!(str_at(entry, &["metadata", "namespace"], &what), namespace);
    let hosts: BTreeSet<&str> = seq_at(entry, &["spec", "hosts"], &what)
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for host in [provider_host, "api.stytch.com", "test.stytch.com"] {
        assert!(
            hosts.contains(host),
            "{what}: {host} missing from {hosts:?}"
        );
    }
    assert_eq!(str_at(entry, &["spec", "location"], &what), "MESH_EXTERNAL");
    assert_eq!(str_at(entry, &["spec", "resolution"], &what), "DNS");
    let export: Vec<&str> = seq_at(entry, &["spec", "exportTo"], &what)
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(export, ["."], "{what}: only m2m-authz's namespace needs it");
    let ports = seq_at(entry, &["spec", "ports"], &what);
    assert_eq!(ports.len(), 1, "{what}");
    assert_eq!(u64_at(&ports[0], &["number"], &what), 443);
    assert_eq!(str_at(&ports[0], &["protocol"], &what), "TLS");
}

/// Issue 13, key material at rest: every Secret volume, and the volume m2m-authz reads its
/// config from (a config may carry secrets), is readable by the Pod's user and fsGroup only —
/// `defaultMode` within 0440, never writable or executable, never for others — and a
/// group-readable mode comes with an `fsGroup` so only the Pod's own group is meant.
#[test]
fn secret_and_config_volumes_are_owner_and_group_only() {
    crate::needs!(Kubectl);
    let mut checked = 0;
    for r in rendered() {
        for workload in r.objects("Deployment") {
            let name = str_at(workload, &["metadata", "name"], &r.dir);
            let what = format!("{} Deployment {name}", r.dir);
            let pod = pod_spec(workload, &what);
            let fs_group = opt(&pod, &["securityContext", "fsGroup"]).and_then(Value::as_u64);
            let sidecar = container(&pod, "m2m-authz", &what);
            let config_dir = flag_value(sidecar, "--config", &what)
                .rsplit_once('/')
                .map(|(dir, _)| dir.to_owned())
                .expect("absolute config path");
            let config_volume = seq_at(sidecar, &["volumeMounts"], &what)
                .iter()
                .find(|m| m.get("mountPath").and_then(Value::as_str) == Some(config_dir.as_str()))
                .map(|m| str_at(m, &["name"], &what).to_owned())
                .unwrap_or_else(|| panic!("{what}: nothing mounted at {config_dir}"));
            for volume in seq_at(&pod, &["volumes"], &what) {
                let volume_name = str_at(volume, &["name"], &what);
                let source = match (volume.get("secret"), volume.get("configMap")) {
                    (Some(secret), _) => secret,
                    (None, Some(cm)) if volume_name == config_volume => cm,
                    _ => continue,
                };
                checked += 1;
                let mode = source
                    .get("defaultMode")
                    .and_then(Value::as_u64)
                    .unwrap_or_else(|| panic!("{what}: volume {volume_name} needs a defaultMode"));
                assert_eq!(
                    mode & !0o440,
                    0,
                    "{what}: volume {volume_name} defaultMode {mode:o} must be within 0440"
                );
                if mode & 0o040 != 0 {
                    assert!(
                        fs_group.is_some(),
                        "{what}: volume {volume_name} is group-readable without an fsGroup"
                    );
                }
            }
        }
    }
    assert!(checked >= 3, "only {checked} secret/config volumes found");
}

// ---------------------------------------------------------------------------
// Issue 20: components that compose, the shared service, images

const SHARED_CACHE_COMPONENT: &str = "deploy/kubernetes/components/shared-cache";
/// The Secret the operator creates for the shared cache (never shipped).
const SHARED_CACHE_SECRET: &str = "m2m-authz-shared-cache";
/// Worst-case memory per cached credential (BENCHMARKS.md: 1,190 B at 1M
/// entries with the access token kept), and what the runtime needs besides.
const BYTES_PER_CACHED_CREDENTIAL: u64 = 1_190;
const RUNTIME_HEADROOM_BYTES: u64 = 64 << 20;

/// `resources` plus `components`, in this order, in an overlay outside
/// deploy/ (as an operator's own overlay would be).
fn render_overlay(resources: &[&str], components: &[&str]) -> Rendered {
    let overlay = TempDir::new("kustomize-combination");
    let list = |dirs: &[&str]| -> String {
        dirs.iter()
            .map(|d| {
                format!(
                    "  - {}\n",
                    relative_path(overlay.path(), &repo_path(d)).display()
                )
            })
            .collect()
    };
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{}components:\n{}",
            list(resources),
            list(components)
        ),
    )
    .expect("write overlay");
    let text = run_ok(Command::new(kubectl()).arg("kustomize").arg(overlay.path()));
    let dir = format!("{} + {}", resources.join(" + "), components.join(" + "));
    let docs = yaml_docs(&text, &dir);
    Rendered { dir, text, docs }
}

/// A Kubernetes memory quantity (`256Mi`, `1Gi`, plain bytes) in bytes.
fn memory_bytes(quantity: &str, what: &str) -> u64 {
    let (digits, unit) = quantity.split_at(
        quantity
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(quantity.len()),
    );
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("{what}: memory {quantity:?}"));
    n * match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("{what}: memory unit {other:?}"),
    }
}

/// A CPU quantity (`500m`, `2`) in millicores.
fn millicores(quantity: &str, what: &str) -> u64 {
    match quantity.strip_suffix('m') {
        Some(m) => m.parse(),
        None => quantity.parse::<u64>().map(|c| c * 1000),
    }
    .unwrap_or_else(|_| panic!("{what}: cpu {quantity:?}"))
}

/// m2m-authz's `cache.max_entries` in a Pod is set explicitly, and its
/// memory limit covers that many worst-case entries plus the runtime.
fn check_cache_sized_for_limit(r: &Rendered, config: &Value, what: &str) -> u64 {
    let max_entries = u64_at(config, &["cache", "max_entries"], what);
    let pod = pod_spec(r.deployment(), what);
    let limit = memory_bytes(
        str_at(
            container(&pod, "m2m-authz", what),
            &["resources", "limits", "memory"],
            what,
        ),
        what,
    );
    assert!(
        max_entries * BYTES_PER_CACHED_CREDENTIAL + RUNTIME_HEADROOM_BYTES <= limit,
        "{what}: cache.max_entries {max_entries} needs about {} MiB; the memory limit is {} MiB",
        (max_entries * BYTES_PER_CACHED_CREDENTIAL + RUNTIME_HEADROOM_BYTES) >> 20,
        limit >> 20
    );
    max_entries
}

/// The config `cache.shared` with everything else equal to `base`.
fn without_shared_cache(config: &Value) -> Value {
    let mut config = config.clone();
    if let Some(cache) = config.get_mut("cache").and_then(Value::as_mapping_mut) {
        cache.remove("shared");
    }
    config
}

/// Every combination deploy/README.md offers renders, validates, and yields
/// the config it promises: config-in-secret holds exactly the config of the
/// same overlay without it; shared-cache adds `cache.shared` (no URL, no key:
/// those come from the operator's Secret) and nothing else; both, in either
/// order, give the same objects; `cache.max_entries` never moves away from
/// what the memory limit was sized for; no Secret value is shipped.
#[test]
fn components_compose_into_the_config_they_promise() {
    crate::needs!(Kubectl, KubernetesValidate);
    let base = rendered_dir(BASE);
    let base_config = yaml_one(&m2m_authz_config(base), BASE);
    let base_entries = check_cache_sized_for_limit(base, &base_config, BASE);

    let secret = render_overlay(&[BASE], &[SECRET_COMPONENT]);
    let cache = render_overlay(&[BASE], &[SHARED_CACHE_COMPONENT]);
    let both = render_overlay(&[BASE], &[SECRET_COMPONENT, SHARED_CACHE_COMPONENT]);
    let both_reversed = render_overlay(&[BASE], &[SHARED_CACHE_COMPONENT, SECRET_COMPONENT]);
    let combinations = [&secret, &cache, &both, &both_reversed];

    // Either order: the same objects, byte for byte.
    assert_eq!(
        both.text, both_reversed.text,
        "config-in-secret and shared-cache must give the same result in either order"
    );

    for r in combinations {
        let what = r.dir.as_str();
        let pod = pod_spec(r.deployment(), what);
        let sidecar = container(&pod, "m2m-authz", what);
        let (kind, name) =
            mounted_source(&pod, sidecar, flag_value(sidecar, "--config", what), what);
        let in_secret = r.dir.contains(SECRET_COMPONENT);
        let with_cache = r.dir.contains(SHARED_CACHE_COMPONENT);
        assert_eq!(
            kind,
            if in_secret { "Secret" } else { "ConfigMap" },
            "{what}: the config's holder"
        );
        let config = yaml_one(&m2m_authz_config(r), what);
        assert_eq!(
            check_cache_sized_for_limit(r, &config, what),
            base_entries,
            "{what}: cache.max_entries must stay what the base's memory limit was sized for"
        );
        // The rest of the Pod is wired as in the base.
        sidecar_pod_wiring(r);

        // Nothing but the config's one holder: no stray ConfigMap or helper.
        let holders: Vec<String> = r
            .objects("ConfigMap")
            .into_iter()
            .chain(r.objects("Secret"))
            .filter(|o| files_of(o, what).contains_key(M2M_AUTHZ_CONFIG_KEY))
            .map(|o| str_at(o, &["metadata", "name"], what).to_owned())
            .collect();
        assert_eq!(
            holders,
            std::slice::from_ref(&name),
            "{what}: one config holder"
        );
        if in_secret {
            assert_eq!(
                opt(&pod, &["volumes"])
                    .and_then(Value::as_sequence)
                    .and_then(|v| v.iter().find(|v| opt(v, &["secret", "secretName"])
                        .and_then(Value::as_str)
                        == Some(name.as_str())))
                    .and_then(|v| opt(v, &["secret", "optional"]))
                    .and_then(Value::as_bool),
                Some(false),
                "{what}: the config Secret volume must not be optional"
            );
        }

        // What each variant promises about the config itself.
        if with_cache {
            let shared = at(&config, &["cache", "shared"], what);
            for key in ["url", "fleet_key"] {
                assert!(
                    shared.get(key).is_none(),
                    "{what}: cache.shared.{key} must come from the operator's Secret, not the config"
                );
            }
            assert_eq!(
                without_shared_cache(&config),
                base_config,
                "{what}: the shared-cache config must be the base's plus cache.shared"
            );
        } else {
            assert_eq!(
                config, base_config,
                "{what}: must hold the base's config unchanged"
            );
        }

        // Secrets are referenced, never shipped: the shared cache's Secret is
        // not rendered, and its references are not optional (a missing
        // Secret keeps the Pod from starting: CreateContainerConfigError).
        assert!(
            r.objects("Secret")
                .iter()
                .all(|s| str_at(s, &["metadata", "name"], what) != SHARED_CACHE_SECRET),
            "{what}: Secret {SHARED_CACHE_SECRET} must be created by the operator, not shipped"
        );
        for s in r.objects("Secret") {
            let keys: BTreeSet<String> = files_of(s, what).into_keys().collect();
            assert_eq!(
                keys,
                BTreeSet::from([M2M_AUTHZ_CONFIG_KEY.to_owned()]),
                "{what}: a shipped Secret may only hold the config file"
            );
        }
        let env = sidecar
            .get("env")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        let refs: BTreeMap<String, (String, String, Option<bool>)> = env
            .iter()
            .filter_map(|e| {
                let r = opt(e, &["valueFrom", "secretKeyRef"])?;
                Some((
                    str_at(e, &["name"], what).to_owned(),
                    (
                        str_at(r, &["name"], what).to_owned(),
                        str_at(r, &["key"], what).to_owned(),
                        r.get("optional").and_then(Value::as_bool),
                    ),
                ))
            })
            .collect();
        let want: BTreeMap<String, (String, String, Option<bool>)> = if with_cache {
            [
                ("M2M_AUTHZ_FLEET_KEY", "fleet-key"),
                ("M2M_AUTHZ_REDIS_URL", "redis-url"),
            ]
            .into_iter()
            .map(|(env, key)| {
                (
                    env.to_owned(),
                    (SHARED_CACHE_SECRET.to_owned(), key.to_owned(), Some(false)),
                )
            })
            .collect()
        } else {
            BTreeMap::new()
        };
        assert_eq!(refs, want, "{what}: Secret references of m2m-authz");
    }

    // The shared-cache file is the base's plus cache.shared.
    let source = yaml_one(
        &read(&repo_path(&format!(
            "{SHARED_CACHE_COMPONENT}/m2m-authz.yaml"
        ))),
        SHARED_CACHE_COMPONENT,
    );
    assert_eq!(without_shared_cache(&source), base_config);

    // Every combination validates, and its config passes check-config.
    let validate = kubernetes_validate();
    let dir = TempDir::new("combinations");
    let binary = env!("CARGO_BIN_EXE_m2m-authz");
    for (i, r) in combinations.iter().enumerate() {
        let config = dir.join(&format!("config-{i}.yaml"));
        std::fs::write(&config, m2m_authz_config(r)).expect("write config");
        let out = run(Command::new(binary)
            .arg("check-config")
            .arg("--config")
            .arg(&config));
        assert!(
            out.success,
            "{}: check-config:\n{}{}",
            r.dir, out.stdout, out.stderr
        );
        let file = dir.join(&format!("rendered-{i}.yaml"));
        std::fs::write(&file, &r.text).expect("write rendered");
        for version in KUBERNETES_VERSIONS {
            let out = run(Command::new(&validate)
                .arg("--strict")
                .args(["-k", version])
                .arg(&file));
            assert!(
                out.success && !out.stdout.contains("WARN"),
                "{} on {version}:\n{}{}",
                r.dir,
                out.stdout,
                out.stderr
            );
            assert_eq!(
                out.stdout.matches(" passed for resource ").count(),
                r.docs.len(),
                "{}: not every object validated",
                r.dir
            );
        }
    }
}

/// deploy/Dockerfile: every FROM takes its image from a digest or from one of
/// the image ARGs the release process pins by digest; the OCI labels come
/// from build args; the builder runs on the build platform and compiles for
/// TARGETARCH.
#[test]
fn dockerfile_pins_bases_labels_and_builds_multi_arch() {
    let text = read(&repo_path("deploy/Dockerfile"));
    // Joined continuation lines.
    let text = text.replace("\\\n", " ");
    let image_args = ["RUST_IMAGE", "RUNTIME_IMAGE"];
    let mut stages = BTreeSet::new();
    let mut froms = 0;
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("FROM ") else {
            continue;
        };
        froms += 1;
        let words: Vec<&str> = rest.split_whitespace().collect();
        let image = words
            .iter()
            .find(|w| !w.starts_with("--"))
            .expect("FROM image");
        let pinned = image.contains("@sha256:")
            || stages.contains(*image)
            || image_args.iter().any(|a| *image == format!("${{{a}}}"));
        assert!(
            pinned,
            "Dockerfile: FROM {image}: pin by digest or use one of {image_args:?}"
        );
        if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("AS")) {
            stages.insert(words[i + 1].to_owned());
        }
    }
    assert!(froms >= 2, "Dockerfile: {froms} FROM lines");
    for arg in image_args {
        assert!(
            text.contains(&format!("--build-arg {arg}=")) && text.contains("@sha256:<digest>"),
            "Dockerfile: the release command must pin {arg} by digest"
        );
    }
    for (label, arg) in [
        ("org.opencontainers.image.version", "VERSION"),
        ("org.opencontainers.image.revision", "REVISION"),
        ("org.opencontainers.image.source", "SOURCE"),
    ] {
        assert!(
            text.contains(&format!("{label}=\"${{{arg}}}\""))
                && text.contains(&format!("ARG {arg}")),
            "Dockerfile: LABEL {label} from ARG {arg}"
        );
    }
    assert!(
        text.contains("FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS builder")
            && text.contains("ARG TARGETARCH"),
        "Dockerfile: the builder cross-compiles from the build platform for TARGETARCH"
    );
    for stale in ["planned", "Nothing else is read and nothing is written"] {
        assert!(!text.contains(stale), "Dockerfile: stale comment {stale:?}");
    }
}

/// The monitoring component scrapes what the Pod serves: each PodMonitor endpoint is a named port
/// of a container of the Pods it selects, m2m-authz's `/metrics` on its admin listener and
/// Envoy's `/stats/prometheus` on the bootstrap's `stats` listener; the dashboard is a ConfigMap
/// that Grafana's sidecar picks up.
#[test]
fn monitoring_component_scrapes_what_the_pod_serves() {
    crate::needs!(Kubectl);
    let r = rendered_dir(MONITORING_COMPONENT);
    let what = r.dir.as_str();
    let deployment = r.deployment();
    let pod = pod_spec(deployment, what);
    let monitors = r.objects("PodMonitor");
    assert_eq!(monitors.len(), 1, "{what}: one PodMonitor");
    let monitor = monitors[0];
    let selector = at(monitor, &["spec", "selector", "matchLabels"], what);
    let pod_labels = at(
        deployment,
        &["spec", "template", "metadata", "labels"],
        what,
    );
    for (key, value) in selector.as_mapping().expect("matchLabels") {
        assert_eq!(
            pod_labels.get(key),
            Some(value),
            "{what}: the PodMonitor selects {key:?}={value:?}, which the Pods lack"
        );
    }
    let config = m2m_authz_config(r);
    let admin = m2m_authz_listen(&config, what)
        .admin
        .unwrap_or_else(|| panic!("{what}: m2m-authz has no listen.admin to scrape"));
    let bootstrap = yaml_one(&envoy_bootstrap(r), what);
    let (stats_host, stats_port) = envoy_listener(&bootstrap, "stats", what);
    let expected = [
        ("m2m-authz", "/metrics", admin.1, admin.0.as_str()),
        (
            "envoy",
            "/stats/prometheus",
            stats_port,
            stats_host.as_str(),
        ),
    ];
    let endpoints = seq_at(monitor, &["spec", "podMetricsEndpoints"], what);
    assert_eq!(
        endpoints.len(),
        expected.len(),
        "{what}: PodMonitor endpoints"
    );
    for (endpoint, (container_name, path, port, host)) in endpoints.iter().zip(expected) {
        let port_name = str_at(endpoint, &["port"], what);
        let c = container(&pod, container_name, what);
        assert_eq!(
            container_port(c, port_name, what),
            port,
            "{what}: PodMonitor port {port_name} is not {container_name}'s {path} listener"
        );
        assert_eq!(str_at(endpoint, &["path"], what), path);
        assert!(
            !host.starts_with("127.") && host != "localhost",
            "{what}: {container_name}'s {path} listens on {host}, which Prometheus cannot reach"
        );
    }
    // Envoy's admin itself stays on loopback.
    assert_eq!(
        str_at(
            &bootstrap,
            &["admin", "address", "socket_address", "address"],
            what
        ),
        "127.0.0.1"
    );
    let dashboards: Vec<&Value> = r
        .objects("ConfigMap")
        .into_iter()
        .filter(|c| opt(c, &["metadata", "labels", "grafana_dashboard"]).is_some())
        .collect();
    assert_eq!(dashboards.len(), 1, "{what}: one dashboard ConfigMap");
    for (key, json) in files_of(dashboards[0], what) {
        let dashboard: serde_json::Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("{what}: dashboard {key} is not JSON: {e}"));
        assert!(dashboard["uid"].is_string() && dashboard["panels"].is_array());
    }
    assert_eq!(
        r.objects("PrometheusRule").len(),
        1,
        "{what}: one PrometheusRule"
    );
}

/// deploy/envoy-gateway: kubernetes-validate has no schemas for the Gateway API or Envoy
/// Gateway's SecurityPolicy, so the fields the example relies on are checked here: the route
/// hangs off the Gateway of Envoy Gateway's class, the SecurityPolicy targets that route, fails
/// closed, sends the credential headers, uses only `extAuth` fields Envoy Gateway has, and its
/// gRPC backend is the m2m-authz Service's port that reaches the container's Check listener;
/// the NetworkPolicy lets the Gateway's Envoy pods in.
#[test]
fn envoy_gateway_security_policy_reaches_the_check_service() {
    crate::needs!(Kubectl);
    let r = rendered_dir(ENVOY_GATEWAY);
    let what = ENVOY_GATEWAY;

    let class = &r.objects("GatewayClass");
    assert_eq!(class.len(), 1, "{what}: one GatewayClass");
    let class = class[0];
    assert_eq!(
        str_at(class, &["spec", "controllerName"], what),
        "gateway.envoyproxy.io/gatewayclass-controller"
    );
    let class_name = str_at(class, &["metadata", "name"], what);
    let gateways = r.objects("Gateway");
    assert_eq!(gateways.len(), 1, "{what}: one Gateway");
    let gateway = gateways[0];
    assert_eq!(
        str_at(gateway, &["apiVersion"], what),
        "gateway.networking.k8s.io/v1"
    );
    assert_eq!(
        str_at(gateway, &["spec", "gatewayClassName"], what),
        class_name
    );
    let gateway_name = str_at(gateway, &["metadata", "name"], what);

    let routes = r.objects("HTTPRoute");
    assert_eq!(routes.len(), 1, "{what}: one HTTPRoute");
    let route = routes[0];
    assert_eq!(
        str_at(route, &["apiVersion"], what),
        "gateway.networking.k8s.io/v1"
    );
    let parents = seq_at(route, &["spec", "parentRefs"], what);
    assert!(
        parents
            .iter()
            .any(|p| str_at(p, &["name"], what) == gateway_name),
        "{what}: the HTTPRoute is not attached to Gateway {gateway_name}"
    );
    let route_name = str_at(route, &["metadata", "name"], what);

    let policies = r.objects("SecurityPolicy");
    assert_eq!(policies.len(), 1, "{what}: one SecurityPolicy");
    let policy = policies[0];
    assert_eq!(
        str_at(policy, &["apiVersion"], what),
        "gateway.envoyproxy.io/v1alpha1"
    );
    let targets = seq_at(policy, &["spec", "targetRefs"], what);
    assert_eq!(targets.len(), 1, "{what}: one targetRef");
    assert_eq!(
        str_at(&targets[0], &["group"], what),
        "gateway.networking.k8s.io"
    );
    assert_eq!(str_at(&targets[0], &["kind"], what), "HTTPRoute");
    assert_eq!(str_at(&targets[0], &["name"], what), route_name);
    let ext_auth = at(policy, &["spec", "extAuth"], what);
    // Envoy Gateway's ExtAuth fields (v1.x); a misspelt key would be dropped or refused by the
    // CRD's schema, and the check silently not configured as intended.
    let known: BTreeSet<String> = [
        "grpc",
        "http",
        "headersToExtAuth",
        "bodyToExtAuth",
        "failOpen",
        "recomputeRoute",
        "timeout",
        "contextExtensions",
    ]
    .map(str::to_owned)
    .into();
    let keys = mapping_keys(ext_auth);
    assert!(
        keys.is_subset(&known),
        "{what}: unknown extAuth fields in {keys:?}"
    );
    assert!(
        opt(ext_auth, &["http"]).is_none(),
        "{what}: gRPC, not HTTP ext_authz"
    );
    assert_eq!(
        opt(ext_auth, &["failOpen"]).and_then(Value::as_bool),
        Some(false),
        "{what}: extAuth must fail closed explicitly"
    );
    let sent: BTreeSet<&str> = seq_at(ext_auth, &["headersToExtAuth"], what)
        .iter()
        .map(|h| h.as_str().expect("header name"))
        .collect();
    for header in ["authorization", "x-client-id", "x-client-secret"] {
        assert!(
            sent.contains(header),
            "{what}: headersToExtAuth lacks {header}"
        );
    }

    // The backend is the m2m-authz Service, on the port whose target is the container's Check
    // listener (listen.grpc of the config the Deployment mounts).
    let backends = seq_at(ext_auth, &["grpc", "backendRefs"], what);
    assert_eq!(backends.len(), 1, "{what}: one gRPC backendRef");
    let backend = &backends[0];
    assert!(
        opt(backend, &["kind"]).is_none_or(|k| k.as_str() == Some("Service")),
        "{what}: the backendRef must be a Service"
    );
    assert!(
        opt(backend, &["namespace"]).is_none(),
        "{what}: same namespace (no ReferenceGrant needed)"
    );
    let service = r.object("Service", str_at(backend, &["name"], what));
    let port = u64_at(backend, &["port"], what);
    let service_port = seq_at(service, &["spec", "ports"], what)
        .iter()
        .find(|p| u64_at(p, &["port"], what) == port)
        .unwrap_or_else(|| panic!("{what}: the Service has no port {port}"));
    let target = str_at(service_port, &["targetPort"], what);
    let pod = pod_spec(r.deployment(), what);
    let m2m = container(&pod, "m2m-authz", what);
    let container_port = container_port(m2m, target, what);
    let listen = m2m_authz_listen(&m2m_authz_config(r), what);
    assert_eq!(
        listen.grpc.tcp(what).1,
        container_port,
        "{what}: the backendRef's port does not reach m2m-authz's listen.grpc"
    );
    // No Istio sidecar behind Envoy Gateway.
    assert!(
        opt(
            r.deployment(),
            &[
                "spec",
                "template",
                "metadata",
                "labels",
                "sidecar.istio.io/inject"
            ]
        )
        .is_none(),
        "{what}: the Istio injection label is left on"
    );

    // The Check port admits the Gateway's Envoy pods.
    let check = r.object("NetworkPolicy", "m2m-authz-check");
    let ingress = seq_at(check, &["spec", "ingress"], what);
    let admits_gateway = ingress.iter().any(|rule| {
        let to_port = seq_at(rule, &["ports"], what)
            .iter()
            .any(|p| u64_at(p, &["port"], what) == u64::from(container_port));
        to_port
            && seq_at(rule, &["from"], what).iter().any(|peer| {
                opt(
                    peer,
                    &[
                        "namespaceSelector",
                        "matchLabels",
                        "kubernetes.io/metadata.name",
                    ],
                )
                .and_then(Value::as_str)
                    == Some("envoy-gateway-system")
                    && opt(
                        peer,
                        &["podSelector", "matchLabels", "app.kubernetes.io/managed-by"],
                    )
                    .and_then(Value::as_str)
                        == Some("envoy-gateway")
            })
    });
    assert!(
        admits_gateway,
        "{what}: the NetworkPolicy shuts out the Gateway's Envoy"
    );
}
